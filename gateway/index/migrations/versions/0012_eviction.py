"""Storage as a cache of the PACS: an evicted instance keeps its index row.

``instances.evicted_at``: set when the instance's file was removed by the retention task (the
PACS still holds it; a WADO-RS request fetches it back by C-MOVE), NULL while the file is in
the store. ``studies.restored_at``: when evicted instances of the study were last fetched back
(it counts as a use of the study in the eviction order).

Revision ID: 0012
Revises: 0011
Create Date: 2027-01-10
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('evicted_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('restored_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.drop_column('restored_at')
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('evicted_at')
