from alembic import context

from idt_runtime.migration_env import run
from services.contact_centre.models import PREFIX, SQLModel

run(context, SQLModel.metadata, PREFIX)
