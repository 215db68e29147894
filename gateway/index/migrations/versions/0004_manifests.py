"""The manifests (KOS) this DRIMbox built to publish, and the instances each
references: the publication outbox's key and the access policy's scope (R4, R8, R10).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'manifests',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kos_uid', sa.String(length=64), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('replaces_kos_uid', sa.String(length=64), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_manifests')),
        sa.UniqueConstraint('kos_uid', name=op.f('uq_manifests_kos_uid')),
    )
    op.create_index(op.f('ix_manifests_study_instance_uid'), 'manifests',
                    ['study_instance_uid'], unique=False)
    op.create_table(
        'manifest_instances',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('manifest_pk', sa.Integer(), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['manifest_pk'], ['manifests.id'],
                                name=op.f('fk_manifest_instances_manifest_pk_manifests')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_manifest_instances')),
        sa.UniqueConstraint('manifest_pk', 'sop_instance_uid',
                            name=op.f('uq_manifest_instances_manifest_pk_sop_instance_uid')),
    )
    op.create_index(op.f('ix_manifest_instances_manifest_pk'), 'manifest_instances',
                    ['manifest_pk'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_manifest_instances_manifest_pk'), table_name='manifest_instances')
    op.drop_table('manifest_instances')
    op.drop_index(op.f('ix_manifests_study_instance_uid'), table_name='manifests')
    op.drop_table('manifests')
