"""The INS on studies (exact, indexed query by INS; the reason when there is none)
and study stability (``stable_at``).

Studies indexed before this revision get '' (no INS known) until an instance of theirs is
received again; ``stable_at`` starts NULL (the monitor marks quiet studies stable).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stable_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('ins_matricule', sa.String(length=15), server_default='', nullable=False))
        batch_op.add_column(sa.Column('ins_oid', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('ins_refusal', sa.Text(), server_default='', nullable=False))
        batch_op.create_index(batch_op.f('ix_studies_ins_matricule'), ['ins_matricule'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_ins_matricule'))
        batch_op.drop_column('ins_refusal')
        batch_op.drop_column('ins_oid')
        batch_op.drop_column('ins_matricule')
        batch_op.drop_column('stable_at')
