"""Viewer sessions (PSC login), pending logins, patient share links (R15).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'share_links',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.Text(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('failed_attempts', sa.Integer(), nullable=False),
        sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_share_links')),
        sa.UniqueConstraint('token_sha256', name=op.f('uq_share_links_token_sha256')),
    )
    op.create_index(op.f('ix_share_links_study_instance_uid'), 'share_links',
                    ['study_instance_uid'], unique=False)
    op.create_table(
        'viewer_sessions',
        sa.Column('id_sha256', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('activity', sa.Text(), nullable=False),
        sa.Column('activities', sa.Text(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('share_link_id', sa.String(length=32), nullable=True),
        sa.Column('id_token', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['share_link_id'], ['share_links.id'],
                                name=op.f('fk_viewer_sessions_share_link_id_share_links'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id_sha256', name=op.f('pk_viewer_sessions')),
    )
    op.create_index(op.f('ix_viewer_sessions_expires_at'), 'viewer_sessions', ['expires_at'],
                    unique=False)
    op.create_index(op.f('ix_viewer_sessions_share_link_id'), 'viewer_sessions',
                    ['share_link_id'], unique=False)
    op.create_table(
        'pending_logins',
        sa.Column('id_sha256', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=128), nullable=False),
        sa.Column('nonce', sa.String(length=128), nullable=False),
        sa.Column('code_verifier', sa.String(length=128), nullable=False),
        sa.Column('return_to', sa.Text(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id_sha256', name=op.f('pk_pending_logins')),
    )
    op.create_index(op.f('ix_pending_logins_expires_at'), 'pending_logins', ['expires_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_pending_logins_expires_at'), table_name='pending_logins')
    op.drop_table('pending_logins')
    op.drop_index(op.f('ix_viewer_sessions_share_link_id'), table_name='viewer_sessions')
    op.drop_index(op.f('ix_viewer_sessions_expires_at'), table_name='viewer_sessions')
    op.drop_table('viewer_sessions')
    op.drop_index(op.f('ix_share_links_study_instance_uid'), table_name='share_links')
    op.drop_table('share_links')
