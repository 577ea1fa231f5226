"""cluster.yaml against the GPU cluster path's requirements, and docs/cluster.md against it; fast,
no Ray started (tests/test_cluster.py checks the schema, the dashboard and the pins)."""

import fnmatch
import json
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from trainables.config import ConfigError

DOCS = (REPO / "docs" / "cluster.md").read_text()
# What rsync must never copy to a node, and what it must (paths relative to the repository).
NOT_COPIED = [
    ".venv/lib/python3.11/site-packages/torch/__init__.py", "results/digits-study/trials.csv",
    "build/lib/study/sweep.py", "lime_robust_study.egg-info/PKG-INFO", ".git/HEAD",
    "study/__pycache__/sweep.cpython-311.pyc", ".pytest_cache/README", ".ruff_cache/CACHEDIR.TAG",
]  # fmt: skip
COPIED = [
    "study/sweep.py", "trainables/refine.py", "trainables/frost/README.md", "analysis/results.py",
    "benchmarks/gpu_smoke.py", "pyproject.toml", "docs/results/README.md",
]  # fmt: skip


def _cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_check_cluster_passes():
    from study.preflight import check_cluster_file

    try:
        check_cluster_file(str(REPO / "cluster.yaml"))
    except ConfigError as e:
        pytest.fail(f"--check-cluster cluster.yaml: {e}")


def _excluded(path: str, patterns: list[str]) -> bool:
    """Whether rsync's --exclude PATTERNs drop `path` (relative to the transfer root) or a folder
    above it, for the pattern forms cluster.yaml uses: NAME (any depth), **/NAME (any depth),
    /NAME (the root only), each NAME a glob without a slash."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        name, at_root = parts[depth - 1], depth == 1
        for pattern in patterns:
            anchored, glob = pattern.startswith("/"), pattern.removeprefix("/").rstrip("/")
            glob = glob.removeprefix("**/")
            assert "/" not in glob, f"rsync pattern {pattern!r}: form not modelled here"
            if fnmatch.fnmatchcase(name, glob) and (at_root or not anchored):
                return True
    return False


def test_rsync_leaves_out_the_venv_and_build_outputs_only():
    patterns = _cluster()["rsync_exclude"]
    assert [p for p in NOT_COPIED if not _excluded(p, patterns)] == []
    assert [p for p in COPIED if _excluded(p, patterns)] == []


@pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync here")
def test_real_rsync_with_rays_own_arguments(tmp_path):
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    src, dst = tmp_path / "repo", tmp_path / "node"
    for path in NOT_COPIED + COPIED:
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text("x")
    shutil.copy(REPO / ".gitignore", src / ".gitignore")
    cfg = _cluster()
    options = {"rsync_exclude": cfg["rsync_exclude"], "rsync_filter": cfg.get("rsync_filter")}
    # Ray builds these arguments for every file_mounts sync (the source folder ends in '/')
    args = SSHCommandRunner._create_rsync_filter_args(None, options)
    subprocess.run(["rsync", "-a", *args, f"{src}/", f"{dst}/"], check=True)
    copied = {str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()}
    assert copied == {*COPIED, ".gitignore"}


def _is_gpu_node(node_type: dict) -> bool:
    instance = node_type["node_config"].get("InstanceType", "")
    return node_type.get("resources", {}).get("GPU", 0) > 0 or bool(re.match(r"[gp]\d", instance))


def test_gpu_nodes_name_a_current_dlami():
    cfg = _cluster()
    types = cfg["available_node_types"]
    gpu_types = [name for name, t in types.items() if _is_gpu_node(t)]
    assert gpu_types, "no GPU node type"
    for name in gpu_types:
        image = types[name]["node_config"].get("ImageId")
        # Ray replaces a missing ImageId (or "latest_dlami") with its CUDA 11.2 default AMI
        assert image and image.lower() != "latest_dlami", f"{name}: Ray's default AMI"
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}|resolve:ssm:/\S+", image), image
        assert "base-oss-nvidia-driver-gpu-ubuntu-22.04" in image or image.startswith("ami-")
    images = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(images) == 1, f"the head and the workers should share one AMI: {images}"


def _policy(heading: str) -> dict:
    """The first JSON block after a heading of docs/cluster.md."""
    section = DOCS[DOCS.index(heading) :]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, f"no JSON policy after {heading!r}"
    return json.loads(block.group(1))


def test_docs_give_the_heads_policy_and_it_matches_cluster_yaml():
    policy = _policy("### IAM")
    allowed = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        for action in [actions] if isinstance(actions, str) else actions:
            allowed[action] = statement["Resource"]
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags",
                   "ec2:Describe*", "iam:PassRole", "s3:GetObject", "s3:PutObject"):  # fmt: skip
        assert action in allowed, action
    types = _cluster()["available_node_types"]
    head = _cluster()["head_node_type"]
    worker_profile = types["gpu_worker"]["node_config"]["IamInstanceProfile"]["Name"]
    head_profile = types[head]["node_config"]["IamInstanceProfile"]["Name"]
    # PassRole on the workers' role alone (role and profile share the name), not on "*"
    assert allowed["iam:PassRole"].endswith(f":role/{worker_profile}")
    assert head_profile != worker_profile and head_profile in DOCS and worker_profile in DOCS


def test_setup_commands_python_snippets_compile():
    for command in _cluster()["setup_commands"]:
        words = shlex.split(command)
        if words[:2] == ["python", "-c"]:
            compile(words[2], "setup_commands", "exec")
