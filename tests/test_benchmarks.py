"""The reproduction script end to end at its smoke scale, and the seed spread read back from it."""

import json

import pytest
import torch

from benchmarks import cifar_base, data_load, ig_memory, reproduce_cifar10, seed_spread


@pytest.mark.slow  # the reproduction script end to end on CIFAR-10: ~40 s
def test_reproduction_table_and_seed_spread_at_smoke_scale(cifar10_tarball, tmp_path):
    out = tmp_path / "repro"
    # both scripts set torch's thread count: keep this process's, so later tests see no change
    threads = ["--threads", str(torch.get_num_threads())]
    args = ["--data", str(cifar10_tarball), "--scale", "smoke", "--rows", "erm,lime_refine"]
    assert reproduce_cifar10.main([*args, "--out", str(out), *threads]) == 0

    result = json.loads((out / "results.json").read_text())
    assert list(result["rows"]) == ["erm", "lime_refine"]
    assert len(result["sweep"]["results"]) == len(reproduce_cifar10.SWEEP)
    best = result["rows"]["lime_refine"]["config"]
    assert {k: best[k] for k in result["sweep"]["best"]} == result["sweep"]["best"]
    for row in result["rows"].values():
        m = row["metrics"]
        assert 0 <= m["test_pgd20_eps8_255"] <= m["test_pgd20_eps1_255"] <= m["test_clean_acc"] <= 1
        assert "test_autoattack_eps2_255" in m and "test_cifar10c_mean" in m
    table = (out / "table.md").read_text()
    assert "| erm |" in table and "| lime_refine |" in table

    spread = seed_spread.main(
        [str(out / "results.json"), "--seeds", "1", "--rows", "erm", *threads]
    )
    assert [(s["row"], s["seed"]) for s in spread] == [("erm", 1)]
    assert 0 <= spread[0]["val_robust_acc"] <= spread[0]["val_clean_acc"] <= 1


@pytest.mark.slow  # a CIFAR-10 base and a width probe: ~13 s
def test_cifar_base_benchmark_at_smoke_scale(cifar10_tarball, tmp_path):
    threads = ["--threads", str(torch.get_num_threads())]  # main sets it: keep this process's
    args = ["--data-dir", str(cifar10_tarball), *threads, "--width", "8"]
    out = cifar_base.main(
        [*args, "--epochs", "1", "--train-subset", "256", "--json", str(tmp_path / "b.json")]
    )
    assert json.loads((tmp_path / "b.json").read_text()) == out
    assert out["train_images"] == 256 and out["test_images"] == 10_000
    assert out["augment"] == "flip_translate" and out["train_s"] > 0
    assert 0 <= out["test_clean_acc"] <= 1 and 0 <= out["val_clean_acc"] <= 1
    assert out["target_met"] is False  # 256 images, one epoch: far below 80%

    probe = cifar_base.main([*args, "16", "--probe-steps", "1"])["probe"]
    assert [row["width"] for row in probe] == [8, 16] and all(r["images_per_s"] > 0 for r in probe)


@pytest.mark.slow  # two processes, one per chunk size: ~8 s
def test_ig_memory_benchmark_at_smoke_scale(tmp_path):
    """Each chunk size in its own process: the same loss (the first step's, before any update),
    a peak memory and a time each."""
    out = tmp_path / "ig.json"
    ig_memory.main(["--micro-batches", "0", "4", "--steps", "1", "--batch-size", "12",
                    "--width", "8", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    whole, chunked = result["rows"]
    assert (whole["ig_micro_batch"], chunked["ig_micro_batch"]) == (0, 4)
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=0.05)  # PGD's starts differ
    assert whole["peak_rss_gib"] > 0.1 and chunked["seconds_per_step"] > 0
    assert whole["time_ratio_to_first"] == 1.0


@pytest.mark.slow  # a base, a PGD-AT refinement and the attacks at smoke scale: ~3 min
def test_square_budget_benchmark_at_smoke_scale(cifar10_tarball, tmp_path):
    from benchmarks import square_budget

    threads = ["--threads", str(torch.get_num_threads())]  # main sets it: keep this process's
    base = tmp_path / "base.pt"
    cifar_base.main(["--data-dir", str(cifar10_tarball), *threads, "--epochs", "1",
                     "--train-subset", "256", "--save", str(base)])  # fmt: skip
    assert (tmp_path / "base.pt.sha256").read_text().strip()
    out = square_budget.main(
        ["--data-dir", str(cifar10_tarball), *threads, "--base", str(base), "--train-subset",
         "256", "--images", "16", "--queries", "5", "50", "--autoattack-images", "2",
         "--eps", "8/255", "--spsa", "2x4", "--transfer"]
    )  # fmt: skip
    assert [(r["model"], r["eps"]) for r in out["rows"]] == [("erm", "8/255"), ("pgd_at", "8/255")]
    for row in out["rows"]:
        assert 0 <= row["pgd_acc"] <= 1 and 0 <= row["square50_acc"] <= 1
        assert row["square50_gap"] == pytest.approx(100 * (row["square50_acc"] - row["pgd_acc"]))
        assert row["autoattack_s_per_image"] > 0
        assert row["spsa2x4_queries"] == 2 * (2 * 4 + 1)
        # an image counts as broken if either attack breaks it
        assert row["square50+spsa2x4_acc"] <= min(row["square50_acc"], row["spsa2x4_acc"])
    # the transfer from the ERM base only where the base is not the model attacked
    assert "transfer_acc" not in out["rows"][0] and 0 <= out["rows"][1]["transfer_acc"] <= 1
    assert out["smallest_budget_within"] in (None, 5, 50)


@pytest.mark.slow  # five processes, each loading a small archive: ~15 s
def test_data_load_benchmark_on_a_small_archive(tmp_path):
    """A cold load, then the sealed and full loads from the cache it filled: the same images."""
    import tarfile

    from tests.test_own_data import make_image_folder

    root = make_image_folder(tmp_path / "pets")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    args = ["--dataset", "imagefolder", "--data-dir", str(archive), "--repeats", "2"]
    out = data_load.main([*args, "--json", str(tmp_path / "d.json")])
    assert json.loads((tmp_path / "d.json").read_text()) == out
    assert out["images"] == 48 and out["cold_seconds"] > 0
    assert len(out["warm_sealed_seconds"]) == len(out["warm_full_seconds"]) == 2
    with pytest.raises(SystemExit):
        data_load.main(["--data-dir", str(tmp_path / "missing.tar.gz")])
