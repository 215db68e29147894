"""The consumer role: retrieved studies (R17) and the PSC access token of a session.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('viewer_sessions') as batch:
        batch.add_column(sa.Column('psc_access_token', sa.Text(), nullable=False,
                                   server_default=''))
    op.create_table(
        'consumer_retrievals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('session_sha256', sa.String(length=64), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('kos_uid', sa.String(length=64), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('patient_ins', sa.String(length=15), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('series', sa.Text(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('viewed_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_consumer_retrievals')),
    )
    op.create_index(op.f('ix_consumer_retrievals_session_sha256'), 'consumer_retrievals',
                    ['session_sha256'], unique=False)
    op.create_index(op.f('ix_consumer_retrievals_kos_uid'), 'consumer_retrievals',
                    ['kos_uid'], unique=False)
    op.create_index(op.f('ix_consumer_retrievals_last_used_at'), 'consumer_retrievals',
                    ['last_used_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_consumer_retrievals_last_used_at'), table_name='consumer_retrievals')
    op.drop_index(op.f('ix_consumer_retrievals_kos_uid'), table_name='consumer_retrievals')
    op.drop_index(op.f('ix_consumer_retrievals_session_sha256'),
                  table_name='consumer_retrievals')
    op.drop_table('consumer_retrievals')
    with op.batch_alter_table('viewer_sessions') as batch:
        batch.drop_column('psc_access_token')
