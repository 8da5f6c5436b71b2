"""Runs examples/shakespeare.py under mpirun for tests/model/test_distributed.py, with test-only faults.

Each rank writes its pid to <out>/pid.<rank> (so a test can signal one rank) and its exit code to
<out>/exit.<rank>, then, after a run that ended normally or on a signal, waits for the other ranks.
Faults, from the environment, are applied by patching here, never in the package:
    DRIVER_RAISE_AT=R:S        rank R raises ArithmeticError at step S (an unexpected exception)
    DRIVER_SKIP_ALLREDUCE=1    gradients stay local (the control of the equality test)
    DRIVER_RANK1_ARGS="..."    extra flags for rank 1 only (the config-mismatch check)
    DRIVER_SIGNAL_AFTER=SIG:R:S  rank R sends itself SIGSIG (INT, TERM) just after step S's
                               loss/stop all-reduce (the worst moment: the request must wait for
                               step S + 1's, so every rank stops after step S + 1)
    DRIVER_DROPOUT_LOG=1       each rank appends its dropout generator's state at the start of each
                               step's forward to <out>/dropout.<rank> (one line per step)
"""
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the script's main, loaded by its path (this file runs as a script under mpirun, without conftest)
shakespeare_main = runpy.run_path(str(REPO / "examples" / "shakespeare.py"))["main"]
from tinygrad_gpt import train  # noqa: E402


def rank():
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def main():
    argv = sys.argv[1:]
    me = rank()
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pid.{me}").write_text(str(os.getpid()))
    if me == 1 and os.environ.get("DRIVER_RANK1_ARGS"):
        argv += os.environ["DRIVER_RANK1_ARGS"].split()
    if os.environ.get("DRIVER_RAISE_AT"):
        fault_rank, fault_step = map(int, os.environ["DRIVER_RAISE_AT"].split(":"))
        original_lr_at = train.Trainer.lr_at

        def lr_at(self, step):
            if me == fault_rank and step + 1 == fault_step:
                raise ArithmeticError(f"injected failure on rank {me} at step {fault_step}")
            return original_lr_at(self, step)
        train.Trainer.lr_at = lr_at
    if os.environ.get("DRIVER_SIGNAL_AFTER"):
        name, term_rank, term_step = os.environ["DRIVER_SIGNAL_AFTER"].split(":")
        signum, term_rank, term_step = getattr(signal, "SIG" + name), int(term_rank), int(term_step)
        original_reduce = train.Trainer._reduce_loss_and_stop

        def reduce(self, loss_value, log_now):
            result = original_reduce(self, loss_value, log_now)
            if me == term_rank and self.state.step + 1 == term_step:
                os.kill(os.getpid(), signum)
            return result
        train.Trainer._reduce_loss_and_stop = reduce
    if os.environ.get("DRIVER_SKIP_ALLREDUCE"):
        original_init = train.Trainer.__init__

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            if self.grad_sync is not None:
                self.grad_sync.skip = True
        train.Trainer.__init__ = init
    if os.environ.get("DRIVER_DROPOUT_LOG"):
        original_forward_backward = train.Trainer._forward_backward

        def forward_backward(self, x, y):
            with open(out / f"dropout.{me}", "a") as f:
                f.write(f"{self.state.step + 1} {self.model.drop_rng.bit_generator.state['state']['state']}\n")
            return original_forward_backward(self, x, y)
        train.Trainer._forward_backward = forward_backward
    code = 1
    try:
        code = shakespeare_main(argv)
    finally:
        (out / f"exit.{me}").write_text(str(code))
    if code in (0, 130, 143):
        # subtle: mpirun ends the whole job as soon as one rank exits with a non-zero status, which
        # could stop a slower rank between the trainer's last barrier and the line above (its exit
        # file then missing). A run that ended in agreement waits here until every rank has written.
        from mpi4py import MPI
        MPI.COMM_WORLD.Barrier()
    sys.exit(code)


if __name__ == "__main__":
    main()
