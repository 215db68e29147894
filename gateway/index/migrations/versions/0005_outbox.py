"""The publication outbox (each publication, replacement or withdrawal, written with
the change that causes it, KOS bytes included) and each study's publication history.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'publication_outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('kos_uid', sa.String(length=64), nullable=False),
        sa.Column('replaces_kos_uid', sa.String(length=64), server_default='', nullable=False),
        sa.Column('ins_matricule', sa.String(length=15), nullable=False),
        sa.Column('ins_oid', sa.String(length=64), nullable=False),
        sa.Column('kos_bytes', sa.LargeBinary(), nullable=True),
        sa.Column('entry_json', sa.Text(), server_default='', nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('claimed_by', sa.Text(), server_default='', nullable=False),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('entry_uuid', sa.Text(), server_default='', nullable=False),
        sa.Column('last_error', sa.Text(), server_default='', nullable=False),
        sa.Column('error_code', sa.Text(), server_default='', nullable=False),
        sa.Column('error_text', sa.Text(), server_default='', nullable=False),
        sa.Column('warnings', sa.Text(), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_publication_outbox')),
    )
    op.create_index(op.f('ix_publication_outbox_kos_uid'), 'publication_outbox', ['kos_uid'],
                    unique=False)
    op.create_index(op.f('ix_publication_outbox_state_next_attempt_at'), 'publication_outbox',
                    ['state', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_publication_outbox_study_instance_uid_id'), 'publication_outbox',
                    ['study_instance_uid', 'id'], unique=False)
    op.create_table(
        'publication_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('kos_uid', sa.String(length=64), server_default='', nullable=False),
        sa.Column('outbox_id', sa.Integer(), nullable=True),
        sa.Column('detail', sa.Text(), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_publication_events')),
    )
    op.create_index(op.f('ix_publication_events_study_instance_uid'), 'publication_events',
                    ['study_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_publication_events_study_instance_uid'), table_name='publication_events')
    op.drop_table('publication_events')
    op.drop_index(op.f('ix_publication_outbox_study_instance_uid_id'), table_name='publication_outbox')
    op.drop_index(op.f('ix_publication_outbox_state_next_attempt_at'), table_name='publication_outbox')
    op.drop_index(op.f('ix_publication_outbox_kos_uid'), table_name='publication_outbox')
    op.drop_table('publication_outbox')
