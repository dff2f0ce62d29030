"""What a failed task is: an infrastructure failure that a retry can get past, or not.

Infrastructure (``infrastructure_failure`` names it): a service that stopped answering
(sslflow.errors.ServiceUnavailable: the tracking server, the object store after its retries, an archive), the process
group (NCCL, gloo, the rendezvous store: torch.distributed's DistError), the GPU (a CUDA error other than running out of
memory), a worker process killed by a signal (the node's OOM killer, a preemption: ``killed_by_signal``). The task layer
raises these as Flyte's recoverable error, so Flyte retries the task (tasks/shared.py). Anything else is not retried: a
sslflow.errors.Refusal is the input's (its message says what to fix), a GPU that runs out of memory or a pod without a
usable GPU fails the same way on every attempt, and any other error is a bug.

torch is not imported here: only a process that imported torch can raise its errors, and the tasks that never train
(ingest) must not load it (``_torch_errors``)."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator

from sslflow.errors import ServiceUnavailable

# RuntimeErrors of torch that mean the hardware or its driver failed, not the code or the input
_HARDWARE_MESSAGES = re.compile(
    r"CUDA error|CUDA driver error|NCCL error|DataLoader worker \(pid \d+\) is killed by signal|cuDNN error: "
    r"CUDNN_STATUS_INTERNAL_ERROR"
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or during, each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _torch_errors() -> tuple[type | tuple, type | tuple, type | tuple]:
    """torch's (out of memory, process group, accelerator) error classes for isinstance when this process imported
    torch, else three empty tuples (isinstance of none): a process that never imported torch cannot have raised them."""
    torch = sys.modules.get("torch")
    if torch is None:
        return (), (), ()
    return torch.cuda.OutOfMemoryError, torch.distributed.DistError, torch.AcceleratorError


def infrastructure_failure(error: BaseException) -> str | None:
    """What of the infrastructure failed ("MLflow tracking server", "the process group (NCCL/gloo)", "the GPU (CUDA)")
    when ``error`` or an exception in its cause chain is an infrastructure failure; None otherwise."""
    out_of_memory, process_group, accelerator = _torch_errors()
    for link in _chain(error):
        if isinstance(link, out_of_memory):
            return None  # the same batch on the same GPU runs out of memory again: a setting to change, not an outage
        if isinstance(link, ServiceUnavailable):
            return link.service or "a service"
        if isinstance(link, process_group):
            return "the process group (NCCL/gloo, rendezvous)"
        if isinstance(link, accelerator) or (isinstance(link, RuntimeError) and _HARDWARE_MESSAGES.search(str(link))):
            return "the GPU or a worker process (CUDA, NCCL)"
    return None


def killed_by_signal(exit_code: int) -> str | None:
    """The signal's name ("SIGKILL") when a worker process ended with ``exit_code`` < 0 (killed by that signal, as
    torch's elastic agent reports it), else None (the worker exited by itself: its own error says why)."""
    if exit_code >= 0:
        return None
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"
