"""Child process of tests/test_dagster_run_monitoring.py: a run whose step holds a `kms` pool slot.

The step writes its run id to $FIELDCRYPT_TEST_MARKER once it holds the slot, then waits
to be killed. Usage: DAGSTER_HOME=... python -m tests.dagster_monitoring_job
"""

import os
import time

import dagster as dg


@dg.op(pool="kms")
def hold_kms_slot(context: dg.OpExecutionContext) -> None:
    with open(os.environ["FIELDCRYPT_TEST_MARKER"], "w") as marker:
        marker.write(context.run_id)
    time.sleep(600)  # killed long before


@dg.job(executor_def=dg.in_process_executor)
def holds_kms() -> None:
    hold_kms_slot()


if __name__ == "__main__":
    dg.execute_job(dg.reconstructable(holds_kms), instance=dg.DagsterInstance.get())
