"""The reports table (HL7 messages from the RIS, R1).

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'reports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sending_application', sa.String(length=255), nullable=False),
        sa.Column('sending_facility', sa.String(length=255), nullable=False),
        sa.Column('msh10', sa.String(length=199), nullable=False),
        sa.Column('message_type', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('other_study_uids', sa.Text(), nullable=False),
        sa.Column('id_cda', sa.String(length=255), nullable=False),
        sa.Column('replaces_id_cda', sa.String(length=255), nullable=False),
        sa.Column('accession_number', sa.String(length=64), nullable=False),
        sa.Column('ins_matricule', sa.String(length=15), nullable=False),
        sa.Column('confidentiality', sa.Text(), nullable=False),
        sa.Column('cda', sa.LargeBinary(), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('ack_code', sa.String(length=2), nullable=False),
        sa.Column('error_location', sa.String(length=64), nullable=False),
        sa.Column('error_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
        sa.UniqueConstraint('sending_application', 'sending_facility', 'msh10',
                            name=op.f('uq_reports_sending_application_sending_facility_msh10')),
    )
    op.create_index(op.f('ix_reports_study_instance_uid'), 'reports', ['study_instance_uid'],
                    unique=False)
    op.create_index(op.f('ix_reports_id_cda'), 'reports', ['id_cda'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_reports_id_cda'), table_name='reports')
    op.drop_index(op.f('ix_reports_study_instance_uid'), table_name='reports')
    op.drop_table('reports')
