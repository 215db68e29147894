"""QIDO-RS: indexed default return attributes and the ModalitiesInStudy index

Series: PerformedProcedureStepStartDate/Time (PS3.18 Table 10.6.3-4). Instances: Rows,
Columns, BitsAllocated, NumberOfFrames (Table 10.6.3-5). Rows indexed before this revision
keep '' / NULL there (the values were not read then); re-sending an instance fills them.
Index series(study_pk, modality): ModalitiesInStudy is aggregated and matched from it alone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('performed_procedure_step_start_date', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('performed_procedure_step_start_time', sa.String(length=32), server_default='', nullable=False))
        batch_op.create_index(batch_op.f('ix_series_study_pk_modality'), ['study_pk', 'modality'], unique=False)

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rows', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('columns', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('bits_allocated', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('number_of_frames', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('number_of_frames')
        batch_op.drop_column('bits_allocated')
        batch_op.drop_column('columns')
        batch_op.drop_column('rows')

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk_modality'))
        batch_op.drop_column('performed_procedure_step_start_time')
        batch_op.drop_column('performed_procedure_step_start_date')
