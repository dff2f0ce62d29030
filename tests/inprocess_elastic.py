"""Test helper: run Elastic training tasks in the calling process instead of torch-elastic workers.

Locally, every Elastic task launches a worker process that re-imports the project (about 10 s of CPU
here) and rendezvouses; a pipeline has three such tasks (the pretrainings), a large share of tests whose subject
is MLflow, Flyte's cache or a data source, not Elastic (tested on its own in test_elastic and test_pod_elastic, and in
the pod runs of test_pods and test_pipeline_pods).
The task function itself is the same; only the launcher is skipped.

    with_inprocess_elastic(monkeypatch)                                   # in a test
    python tests/inprocess_elastic.py run workflows/pipeline.py ...       # `pyflyte`, patched
"""

from __future__ import annotations

from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask


def _run_in_process(self, **kwargs):
    return self._task_function(**kwargs)


def with_inprocess_elastic(monkeypatch) -> None:
    monkeypatch.setattr(PytorchElasticFunctionTask, "_execute", _run_in_process)


if __name__ == "__main__":
    PytorchElasticFunctionTask._execute = _run_in_process
    from flytekit.clis.sdk_in_container.pyflyte import main

    main()
