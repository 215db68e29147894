"""The audit trail of access decisions (R15, R22).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('principal_kind', sa.String(length=16), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('via', sa.String(length=32), nullable=False),
        sa.Column('activity', sa.Text(), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('sop_instance_uids', sa.Text(), nullable=False),
        sa.Column('patient_ins', sa.String(length=15), nullable=False),
        sa.Column('kos_uid', sa.String(length=64), nullable=False),
        sa.Column('client_address', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    )
    op.create_index(op.f('ix_audit_events_recorded_at'), 'audit_events', ['recorded_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_audit_events_recorded_at'), table_name='audit_events')
    op.drop_table('audit_events')
