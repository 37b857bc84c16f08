"""Running selectors on a search run directory: RUN/selections/<method>.json and result.json's ``selections``.

Methods register here with ``register_method``. A selector is called as ``fn(run, ctx) -> Selection``
where ``run`` is the rebuilt supernet (``dnas.search.SearchRun``, or None for training-free methods
given no run) and ``ctx`` carries options, progress settings and a per-method checkpoint for
progressive methods that must resume after an interruption.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DnasError, memory_limits
from ..io import atomic_torch_save, atomic_write_json
from ..rundir import read_selection, selection_summary, update_result
from ..spaces import Space
from .base import Selection, removed_ops_named
from .common import method_options
from .magnitude import select_magnitude


@dataclass
class SelectionContext:
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    resume: bool = False
    quiet: bool = False
    force: bool = False  # start over even though an interrupted selection is saved

    @property
    def checkpoint(self) -> Path | None:
        return None if self.run_dir is None else _checkpoint(self.run_dir, self.method)

    def check_saved(self) -> None:
        """Nothing saved is replaced without a flag: an interrupted selection (its checkpoint) takes --resume or
        --force, a finished one (selections/<method>.json) --force, as an existing run directory does."""
        if self.run_dir is None or self.resume or self.force:
            return
        if self.checkpoint is not None and self.checkpoint.exists():
            raise DnasError(f"{self.method}: an interrupted selection is saved in {self.checkpoint.parent}; "
                            "use --resume to continue it or --force to start over")
        done = _finished_file(self.run_dir, self.method)
        if done is not None:
            raise DnasError(f"{done} already exists (selection {self.method} has finished); use --force to select "
                            "again (--resume with its options leaves it as it is)")

    def save_state(self, state: dict[str, Any]) -> None:
        """Checkpoint a progressive selector (after each decision)."""
        if self.checkpoint is not None:
            from ..rundir import rng_state
            atomic_torch_save(self.checkpoint, {**state, "method": self.method, "rng": rng_state()})

    def load_state(self, fields: dict[str, Any], required: tuple[str, ...],
                   check: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """The saved state when resuming, else None (and RNG restored with it). An interrupted selection is
        never discarded silently: without ``resume`` it takes ``force``, and even then it stays until the new
        selection's first ``save_state`` replaces it (a start that fails or is interrupted keeps it).

        The state must hold ``fields`` of their types (``schema.check_fields``; ``required`` ones present) and
        pass ``check`` (the selector's own: its options, its run, its supernet); a checkpoint that does not is
        one DnasError naming it, raised before anything is restored or written, that says --force starts over."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        if not self.resume:
            self.check_saved()
            return None
        from ..rundir import load_checkpoint, set_rng_state
        try:
            state = load_checkpoint(self.checkpoint.parent, self.checkpoint.name, {"method": str, **fields}, required,
                                    what=f"a {self.method} selection checkpoint")
            if state.get("method", self.method) != self.method:  # older checkpoints name no method
                raise DnasError(f"{self.checkpoint}: a checkpoint of method {state['method']}, not {self.method}")
            check(state)
            set_rng_state(state["rng"], self.checkpoint)
        except DnasError as e:
            raise DnasError(f"{e}; use --force to start over") from None
        return state

    def clear_state(self) -> None:
        if self.checkpoint is not None and self.checkpoint.exists():
            self.checkpoint.unlink()


Selector = Callable[[Any, SelectionContext], Selection]


@dataclass(frozen=True)
class Method:
    name: str
    fn: Selector
    needs_run: bool = True
    description: str = ""


METHODS: dict[str, Method] = {}
# Modules that register further methods when imported (kept lazy so the core imports fast).
_METHOD_MODULES = ("pt", "ostr", "zeros")


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def _magnitude(run: Any, ctx: SelectionContext) -> Selection:
    method_options(ctx, {})  # it has none: any option is a mistake
    return select_magnitude(run.model.arch)


register_method(Method("magnitude", _magnitude, description="argmax of the mixing weights (DARTS)"))


def _load_methods() -> None:
    for mod in _METHOD_MODULES:
        name = f"{__package__}.{mod}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def get_method(name: str) -> Method:
    _load_methods()
    try:
        return METHODS[name]
    except KeyError:
        raise DnasError(f"unknown selection method {name!r} (known: {', '.join(METHODS)})") from None


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    for n in names:
        get_method(n)
    return names


def ground_truth_hook() -> Callable[[Space, Selection], dict[str, Any]] | None:
    """NAS-Bench-201 ground truth for NB201 selections, when a table is configured ($DNAS_NB201_TABLE)."""
    try:
        from ..bench import lookup_nb201
    except ImportError:
        return None

    def hook(space: Space, sel: Selection) -> dict[str, Any]:
        if space.family != "nb201":
            return {}
        row = lookup_nb201(sel.genotype)
        return {"ground_truth": row} if row else {}

    return hook


def run_selection(run_dir: str | Path, method: str, *, options: dict[str, Any] | None = None, resume: bool = False,
                  quiet: bool = False, device: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run one selector on a search run; writes selections/<method>.json and updates result.json.

    ``resume`` continues an interrupted selection; one that already finished with the same ``options`` is
    returned as saved, with nothing rerun or rewritten. Without ``resume`` or ``force`` a finished or interrupted
    selection of ``method`` is refused (``SelectionContext.check_saved``); ``force`` selects again."""
    from ..search import open_run
    from ..search.run import read_search_config
    from ..rundir import require_finished
    m = get_method(method)
    run_dir = Path(run_dir)
    if resume and force:
        raise DnasError("--resume and --force exclude each other")
    ctx = SelectionContext(method, dict(options or {}), run_dir, resume, quiet, force)
    read_search_config(run_dir, device)  # the run's files are checked first, as for a selection that runs
    if resume:
        done = _resumed(run_dir, method, options)
        if done is not None:
            return done
    ctx.check_saved()  # before the data and the supernet are loaded
    run = open_run(run_dir, device=device)
    require_finished(run_dir)
    # Other methods may select from the same run at once (the run is shared: no search --resume/--force meanwhile);
    # one method only once at a time (it writes selections/<method>.ckpt.pt, .tune.jsonl and .json).
    with _locks(run_dir, method):
        require_finished(run_dir)  # again under the lock: a search --force may have started since
        ctx.check_saved()  # and another `select` of this method may have finished since
        from ..search.run import SEARCH_SIZES, supernet_sizes
        sizes = {**supernet_sizes(run.config, run.dataset.resolution, run.device),
                 "eval_batch_size": (options or {}).get("eval_batch_size")}
        with memory_limits(f"selecting with {method} on {run_dir}", sizes,
                           f"--option eval_batch_size (pt, ostr), or search a smaller supernet ({SEARCH_SIZES})"):
            sel = m.fn(run, ctx)
        sel.warnings.extend(w for w in removed_ops_named(run.model.arch, sel.genotype) if w not in sel.warnings)
        entry = {**sel.to_json(), "requested_options": dict(options or {})}
        hook = ground_truth_hook()
        if hook is not None:
            entry.update(hook(run.space, sel))
        atomic_write_json(run_dir / "selections" / f"{method}.json", entry)
        _record(run_dir, method, entry)
        ctx.clear_state()  # last: until result.json has the selection, --resume finishes it from the checkpoint
    return entry


@contextmanager
def _locks(run_dir: Path, method: str) -> Iterator[None]:
    from ..rundir import run_lock
    with run_lock(run_dir, shared=True), \
            run_lock(run_dir, name=f"selections/.{method}.lock", what=f"{run_dir} (selection {method})"):
        yield


def _resumed(run_dir: Path, method: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
    """With --resume: the selection if it already finished with these options (put back in result.json if a kill
    came between the two writes; nothing is written when it is there), else None."""
    from ..rundir import require_finished
    require_finished(run_dir)
    if finished_selection(run_dir, method, options) is None:
        return None
    with _locks(run_dir, method):
        require_finished(run_dir)
        done = finished_selection(run_dir, method, options)
        if done is not None:
            _record(run_dir, method, done)
    return done


def _record(run_dir: Path, method: str, entry: dict[str, Any]) -> None:
    update_result(run_dir, selections={method: selection_summary(entry)})


def finished_selection(run_dir: str | Path, method: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The saved selection of ``method`` if it finished with the same requested options, else None.

    An interrupted one (its checkpoint is still there) or one asked with other options does not count.
    """
    path = _finished_file(Path(run_dir), method)
    if path is None:
        return None
    entry = read_selection(path)
    # the search's own magnitude selection records no requested options: it has none
    return entry if entry.get("requested_options", {}) == dict(options or {}) else None


def _checkpoint(run_dir: Path, method: str) -> Path:
    return run_dir / "selections" / f"{method}.ckpt.pt"


def _finished_file(run_dir: Path, method: str) -> Path | None:
    """selections/<method>.json if that selection has finished: none while its checkpoint is there (a rerun
    with --force was interrupted)."""
    path = run_dir / "selections" / f"{method}.json"
    return path if path.exists() and not _checkpoint(run_dir, method).exists() else None


def select_without_run(method: str, *, options: dict[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run a training-free selector with no search run (e.g. ``zeros`` with ``options["space"]``)."""
    m = get_method(method)
    if m.needs_run:
        raise DnasError(f"method {method!r} needs a search run directory (only training-free methods run without: "
                        f"{', '.join(n for n, x in METHODS.items() if not x.needs_run)})")
    sel = m.fn(None, SelectionContext(method, dict(options or {}), None, False, quiet))
    entry = sel.to_json()
    hook = ground_truth_hook()
    if hook is not None:
        from ..spaces import get_space
        entry.update(hook(get_space(sel.space), sel))
    return entry


def run_selections(run_dir: str | Path, methods: list[str], *, resume: bool = False, quiet: bool = False,
                   options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run several selectors in turn. With ``resume``, a selector that already finished with the same options
    is not run again (a search + selectors run killed during its last selector redoes only that one)."""
    from ..rundir import read_result
    for method in methods:
        run_selection(run_dir, method, options=(options or {}).get(method), resume=resume, quiet=quiet)
    return read_result(run_dir)
