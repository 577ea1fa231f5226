"""Where a study stands: `python -m study.status STUDY_DIR` (a local path or a URI such as s3://).

For a running, interrupted or finished study: the trials of each stage (search, baselines,
confirmation) by status, the errored trials with their one-line reasons, the current front of the
search (configurations by their means over replicates, with 95% intervals), the answer table
(and an ablation's table) when the confirmation has written it, and the command that resumes the
study, or "finished".
It reads only the study's files (never Ray), so it works while the study runs, after it was
interrupted, and on another machine. "running" is what Tune last recorded: for an interrupted
study those trials are the ones that were running when it stopped (see "last update").
study.stages.fit_stage reads the same saved state to tell a stage that finished from one Ctrl-C
stopped.
"""

import argparse
import os
import posixpath
import shlex
import sys
import time
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs

from analysis.replicates import aggregate_configs, config_front
from analysis.results import load_study_settings, load_trials, objectives_of
from analysis.tables import (
    answer_table_text,
    count_statuses,
    format_counts,
    format_duration,
    front_table,
    stage_of,
)
from study.store import (
    ABLATION_FILE,
    ANSWER_FILE,
    PLAN_FILE,
    SCHEDULER_STATE_FILE,
    STAGES,
    STUDY_FILE,
    TRAIN_RUNS_DIR,
    StudyStore,
    open_fs,
)


class StudyError(Exception):
    """Not a study directory (missing, or no study.json), or unreadable."""


@dataclass
class StudySummary:
    name: str
    study_dir: str
    resume: str  # the command that continues the study
    objectives: dict[str, str]
    searched: list[str]
    counts: dict[str, dict[str, int]]  # stage -> done/running/pending/errored/stopped
    totals: dict[str, int | None]  # stage -> planned trials (None: not known yet)
    errors: list[str] = field(default_factory=list)  # '[stage] config/rN (trial id): reason'
    front: pd.DataFrame | None = None  # None: no finished configuration yet
    n_configs: int = 0  # searched configurations with a finished replicate
    answer: pd.DataFrame | None = None
    ablation: pd.DataFrame | None = None  # an ablation's variants against its full setting
    confirm_seeds: int = 0
    last_update: float | None = None  # newest Tune state or result file (epoch seconds)

    @property
    def unfinished(self) -> int:
        return sum(c["running"] + c["pending"] for c in self.counts.values())

    @property
    def finished(self) -> bool:
        """Every planned trial has an end (errored ones too), and the confirmation ran, or was
        not asked for, or had nothing to confirm."""
        if self.unfinished:
            return False
        if self.confirm_seeds == 0 or self.front is None:  # nothing to confirm
            return True
        return self.totals["confirmation"] is not None or self.answer is not None


def baseline_trials(baselines) -> int:
    """Configurations the baselines run: one per fixed method, num_samples per searched one."""
    return sum(1 if isinstance(b, str) else int(b.get("num_samples") or 0) for b in baselines)


def _stopped_configs(store: StudyStore) -> dict[str, int]:
    """config id -> rung at which MO-ASHA stopped it (study.scheduler.stopped_configs)."""
    state = store.read_json(SCHEDULER_STATE_FILE) or {}
    return {k: int(v) for k, v in (state.get("stopped") or {}).items()}


def _last_update(fs: pafs.FileSystem, root: str) -> float | None:
    """The newest Tune experiment state or trial result, at most 3 levels down (not into the
    Train checkpoints)."""
    newest, dirs = None, [root]
    for _ in range(3):
        subdirs = []
        for d in dirs:
            for info in fs.get_file_info(pafs.FileSelector(d)):
                if info.type == pafs.FileType.Directory:
                    if info.base_name != TRAIN_RUNS_DIR:
                        subdirs.append(info.path)
                elif info.mtime is not None and (
                    info.base_name == "result.json"
                    or info.base_name.startswith("experiment_state-")
                ):
                    t = info.mtime.timestamp()
                    newest = t if newest is None else max(newest, t)
        dirs = subdirs
    return newest


def resume_command(study_dir: str, settings: dict) -> str:
    """`python -m study.sweep --resume --name NAME --storage STORAGE`, from study.json, unless
    the study directory has moved since (then from where it is now)."""
    name, storage = settings.get("name"), settings.get("storage")
    if "://" in study_dir:
        here_storage, here_name = study_dir.rstrip("/").rsplit("/", 1)
        same = storage and name and f"{storage.rstrip('/')}/{name}" == study_dir.rstrip("/")
    else:
        path = os.path.abspath(os.path.expanduser(study_dir))
        here_storage, here_name = os.path.dirname(path), os.path.basename(path)
        recorded = os.path.join(storage, name) if storage and name else None
        same = (
            recorded is not None and os.path.exists(recorded) and os.path.samefile(recorded, path)
        )
    if not same:
        name, storage = here_name, here_storage
    name, storage = shlex.quote(name), shlex.quote(storage)
    return f"python -m study.sweep --resume --name {name} --storage {storage}"


def _who(row: pd.Series) -> str:
    config_id = row.get("config/config_id")
    if not isinstance(config_id, str) or not config_id:
        config_id = row["trial_id"]
    replicate = row.get("config/replicate")
    return f"{config_id}/r{int(replicate)}" if pd.notna(replicate) else str(config_id)


def summarize_study(study_dir: str | os.PathLike) -> StudySummary:
    """Read a study directory (local or URI) into a StudySummary; StudyError if it is none."""
    study_dir = os.fspath(study_dir)
    try:
        fs, root = open_fs(study_dir)
        store = StudyStore(study_dir)
        kind = fs.get_file_info(root).type
        if kind == pafs.FileType.NotFound:
            raise StudyError(f"{study_dir}: no such directory")
        if kind != pafs.FileType.Directory:
            raise StudyError(f"{study_dir}: not a directory")
        if not store.exists(STUDY_FILE):
            raise StudyError(f"{study_dir}: not a study directory (no {STUDY_FILE})")
        settings = load_study_settings(study_dir)
        trials = load_trials(study_dir)
        plan = store.read_json(PLAN_FILE)
        name = settings.get("name") or posixpath.basename(root.rstrip("/"))
        stopped = _stopped_configs(store)
        answer = store.read_table(ANSWER_FILE)
        ablation = store.read_table(ABLATION_FILE)
        last_update = _last_update(fs, root)
    except (OSError, ValueError, KeyError) as e:  # unreadable storage, malformed files
        raise StudyError(f"{study_dir}: cannot read the study ({e})") from e

    objectives = objectives_of(settings)
    searched = list(settings.get("search") or {})
    replicates = int(settings.get("replicates") or 1)
    confirm_seeds = int(settings.get("confirm_seeds") or 0)
    totals: dict[str, int | None] = {
        "search": int(settings.get("num_samples") or 0) * replicates,
        "baselines": baseline_trials(settings.get("baselines") or ()) * replicates,
        "confirmation": len(plan) if plan is not None else (0 if confirm_seeds == 0 else None),
    }

    trials["stage"] = [stage_of(e, name) for e in trials["experiment"]]
    if stopped and "config/config_id" in trials:
        is_stopped = (trials["stage"] == "search") & trials["config/config_id"].isin(stopped)
        trials.loc[is_stopped, "status"] = "STOPPED"

    counts, errors = {}, []
    for stage in STAGES:
        rows = trials[trials["stage"] == stage]
        total = totals[stage]
        counts[stage] = count_statuses(rows["status"], total=total)
        if total is not None:
            totals[stage] = max(total, len(rows))
        for _, row in rows[rows["status"] == "ERROR"].iterrows():
            reason = row.get("error") or "no error message (see the trial's error.txt)"
            errors.append(f"[{stage}] {_who(row)} (trial {row['trial_id']}): {reason}")

    front, n_configs = None, 0
    search = trials[trials["stage"] == "search"]
    if (search["status"] == "TERMINATED").any():
        configs = aggregate_configs(search, objectives, searched)
        n_configs = len(configs)
        if not configs.empty:
            front = config_front(configs, objectives)

    return StudySummary(
        name=name,
        study_dir=study_dir,
        resume=resume_command(study_dir, settings),
        objectives=objectives,
        searched=searched,
        counts=counts,
        totals=totals,
        errors=errors,
        front=front,
        n_configs=n_configs,
        answer=answer,
        ablation=ablation,
        confirm_seeds=confirm_seeds,
        last_update=last_update,
    )


def format_summary(s: StudySummary, now: float | None = None) -> str:
    """The summary as text: stages, errors, front, answer, and what to do next."""
    now = time.time() if now is None else now
    updated = ""
    if s.last_update is not None:
        updated = f"; last update {format_duration(now - s.last_update)} ago"
    lines = [f"Study {s.name} ({s.study_dir}{updated})"]
    width = max(len(stage) for stage in STAGES)
    for stage in STAGES:
        total, counts = s.totals[stage], s.counts[stage]
        if stage == "confirmation" and total is None:
            text = "not started"
        elif stage == "confirmation" and total == 0 and s.confirm_seeds == 0:
            text = "skipped (confirm_seeds: 0)"
        else:
            text = format_counts(counts, total, show_stopped=True)
        lines.append(f"  {stage:<{width}}  {text}")
    if s.errors:
        lines.append(f"Errored trials ({len(s.errors)}):")
        lines += [f"  {e}" for e in s.errors[:10]]
        if len(s.errors) > 10:
            lines.append(f"  ... and {len(s.errors) - 10} more (trials.csv, column error)")
    if s.front is None:
        lines.append("Front of the search: no finished configuration yet")
    else:
        lines.append(
            f"Front of the search ({len(s.front)} of {s.n_configs} configurations; means over "
            "replicates, 95% t-intervals):"
        )
        lines.append(front_table(s.front, s.objectives, s.searched))
    if s.answer is not None:
        if s.answer.empty:
            lines.append("Answer: empty (PGD-AT not among the baselines, or nothing confirmed)")
        else:
            lines.append(
                "Answer (test split, paired by seed; differences in percentage points, "
                "95% t-intervals):"
            )
            lines.append(answer_table_text(s.answer))
    elif s.totals["confirmation"] is not None and s.totals["confirmation"] > 0:
        lines.append("Answer: not written yet (the confirmation has not finished)")
    if s.ablation is not None and not s.ablation.empty:
        lines.append(
            "Ablation (test split, each variant minus the full setting, paired by seed; "
            "differences in percentage points, 95% t-intervals):"
        )
        lines.append(answer_table_text(s.ablation))
    if s.finished and not s.errors:
        lines.append("Finished.")
    elif s.finished:
        lines.append(f"Finished, with {len(s.errors)} errored trials; to retry them: {s.resume}")
    else:
        lines.append(f"To resume: {s.resume}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m study.status",
        description="Where a study stands: trials by stage and status, errors, the current "
        "front, the answer, and the command that resumes it.",
    )
    p.add_argument("study_dir", metavar="STUDY_DIR", help="a study directory: a path or a URI")
    args = p.parse_args(argv)
    try:
        summary = summarize_study(args.study_dir)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
