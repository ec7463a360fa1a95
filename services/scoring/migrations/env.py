from alembic import context
from sqlmodel import SQLModel

from idt_runtime.migration_env import run
from services.scoring.models import PREFIX

run(context, SQLModel.metadata, PREFIX)
