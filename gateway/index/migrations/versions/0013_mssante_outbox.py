"""MSSanté delivery of reports: the ``mssante_outbox`` table (one row per message).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'mssante_outbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('id_cda', sa.Text(), nullable=False),
        sa.Column('recipient_kind', sa.String(length=16), nullable=False),
        sa.Column('recipient_id', sa.Text(), server_default='', nullable=False),
        sa.Column('address', sa.Text(), nullable=False),
        sa.Column('message_id', sa.String(length=255), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('ack_reception', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('ack_read', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('claimed_by', sa.Text(), server_default='', nullable=False),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('smtp_reply', sa.Text(), server_default='', nullable=False),
        sa.Column('last_error', sa.Text(), server_default='', nullable=False),
        sa.Column('error_code', sa.Text(), server_default='', nullable=False),
        sa.Column('error_text', sa.Text(), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mssante_outbox')),
        sa.UniqueConstraint('message_id', name=op.f('uq_mssante_outbox_message_id')),
    )
    op.create_index(op.f('ix_mssante_outbox_state_next_attempt_at'), 'mssante_outbox',
                    ['state', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_mssante_outbox_study_instance_uid_id'), 'mssante_outbox',
                    ['study_instance_uid', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mssante_outbox_study_instance_uid_id'), table_name='mssante_outbox')
    op.drop_index(op.f('ix_mssante_outbox_state_next_attempt_at'), table_name='mssante_outbox')
    op.drop_table('mssante_outbox')
