"""The consumer role: patient contexts from the appel contextuel (R13, R14).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'consumer_contexts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pending_sha256', sa.String(length=64), nullable=True),
        sa.Column('session_sha256', sa.String(length=64), nullable=True),
        sa.Column('ins_matricule', sa.String(length=15), nullable=False),
        sa.Column('traits', sa.Text(), nullable=False),
        sa.Column('situation', sa.Text(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_consumer_contexts')),
        sa.UniqueConstraint('pending_sha256', name=op.f('uq_consumer_contexts_pending_sha256')),
    )
    op.create_index(op.f('ix_consumer_contexts_session_sha256'), 'consumer_contexts',
                    ['session_sha256'], unique=False)
    op.create_index(op.f('ix_consumer_contexts_expires_at'), 'consumer_contexts',
                    ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_consumer_contexts_expires_at'), table_name='consumer_contexts')
    op.drop_index(op.f('ix_consumer_contexts_session_sha256'), table_name='consumer_contexts')
    op.drop_table('consumer_contexts')
