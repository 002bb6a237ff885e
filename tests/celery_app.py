"""The Celery app the multi-worker test's workers run: dagster_celery's step task on the test's Redis.

The same as `dagster-celery worker start` (dagster_celery.app) but with the broker and
result backend from FIELDCRYPT_CELERY_BROKER / FIELDCRYPT_CELERY_BACKEND, the variables the
code location's celery executor reads (pipelines/definitions.py).
"""

from __future__ import annotations

import os

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

app = make_app({"broker": os.environ["FIELDCRYPT_CELERY_BROKER"], "backend": os.environ["FIELDCRYPT_CELERY_BACKEND"]})
# One unacknowledged step per worker: a worker busy with a step leaves the next one to the other.
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)
execute_plan = create_task(app)
