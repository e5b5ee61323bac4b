"""The ground-truth editability benchmark: truths differ from the source only in the edited
factor's region, the metrics and KID behave, settings pass through, and a tiny run reports
every field (``i2score.bench.editability``, ``i2score.features.kid``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from i2score.bench import editability as eb
from i2score.features.kid import KID_NOTE, KIDFeatures, kid, poly_mmd2


@pytest.mark.parametrize("seeds", eb.pair_seeds(6))
def test_truth_differs_from_source_only_inside_the_edited_region(seeds):
    pair = eb.truth_pair(seeds[0], seeds[1], resolution=64)
    # The donor's neutral twin differs from the donor in the mouth alone.
    mouth = eb.outside_mask(torch.from_numpy(eb.edit_region(seeds[1], seeds[0], "expression"))[None, None])
    twin = np.abs(pair.donor.astype(int) - pair.donor_neutral.astype(int)).max(-1)
    assert twin[mouth[0, 0].numpy() > 0.5].max() == 0 and twin.max() > 0
    for edit in eb.EDITS:
        diff = np.abs(pair.truths[edit].astype(int) - pair.source.astype(int)).max(-1)
        outside = eb.outside_mask(torch.from_numpy(pair.regions[edit])[None, None])[0, 0].numpy() > 0.5
        assert diff[outside].max() == 0, f"{edit}: truth changes {int((diff[outside] > 0).sum())} px outside"
        assert outside.sum() > 0 and pair.regions[edit].sum() > 0


def test_each_edit_changes_its_region_on_some_pair():
    pairs = [eb.truth_pair(a, b, 64) for a, b in eb.pair_seeds(4)]
    for edit in eb.EDITS:
        inside = [np.abs(p.truths[edit].astype(int) - p.source.astype(int)).max(-1)[p.regions[edit]].mean()
                  for p in pairs]
        assert max(inside) > 5, (edit, inside)


def test_truth_factors_take_the_donors_values_and_keep_the_rest():
    a, b = eb.pair_seeds(1)[0]
    f = eb.truth_factors(a, b, "hair")
    donor = eb.sample_params(b)
    assert f["hair_color"] == donor.hair_color and f["hair_style"] == donor.hair_style
    assert f["mouth"] == "closed" and set(f) == {"mouth", *eb.EDITS["hair"].factors}
    assert eb.truth_factors(a, b, "expression") == {"mouth": "smile"}
    with pytest.raises(ValueError, match="edit must be one of"):
        eb.edit_region(a, b, "nose")


def test_edit_metrics_zero_for_the_truth_and_positive_for_another_image():
    from i2score.features import load_lpips

    pairs = [eb.truth_pair(a, b, 64) for a, b in eb.pair_seeds(2)]
    src = eb.to_tensor([p.source for p in pairs])
    truth = eb.to_tensor([p.truths["hair"] for p in pairs])
    region = torch.from_numpy(np.stack([p.regions["hair"] for p in pairs]))[:, None].float()
    lp = load_lpips()
    same = eb.edit_metrics(truth, truth, src, src, region, lp)
    assert all(m["lpips"] == 0 and m["change_outside"] == 0 and m["leak_outside"] == 0 for m in same)
    assert all(m["psnr"] == m["psnr_region"] > 120 for m in same)  # metrics.psnr's cap: 10·log10(4/1e-12)
    other = eb.edit_metrics(src.flip(0), truth, src, src, region, lp)
    assert all(m["lpips"] > 0.01 and m["change_outside"] > 1 and np.isfinite(m["psnr"]) for m in other)
    # The source itself: far from the truth inside the hair region, identical outside it, so the
    # region's PSNR is the lower one.
    base = eb.edit_metrics(src, truth, src, src, region, lp)
    assert all(m["lpips"] > 0 and m["change_outside"] == 0 and m["psnr_region"] < m["psnr"] for m in base)
    # The source differs from the truth only inside the region, so pasting the truth there gives
    # the truth exactly (floor 0); another person's image keeps its error outside the region.
    assert eb.region_floor(src, truth, region, lp) == [0.0, 0.0]
    floor = eb.region_floor(src.flip(0), truth, region, lp)
    assert all(0.01 < f < m["lpips"] for f, m in zip(floor, other, strict=True))


def test_poly_mmd2_matches_torchmetrics_and_separates_distributions():
    from torchmetrics.image.kid import poly_mmd

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 16, generator=gen), torch.randn(40, 16, generator=gen) + 0.5
    assert poly_mmd2(x, y) == pytest.approx(float(poly_mmd(x.double(), y.double())), rel=1e-9)
    same = torch.randn(300, 16, generator=gen)
    far = kid(same[:150], same[150:]).kid
    assert abs(far) < kid(x, y).kid / 5 and kid(x, y).kid > 0
    r = kid(x, y[:10])  # unequal sizes are fine
    assert r.n == 40 and r.n_ref == 10 and r.std > 0
    with pytest.raises(ValueError, match="at least 2"):
        poly_mmd2(x[:1], y)


def test_kid_features_fit_torchmetrics_kid(vgg):
    from torchmetrics.image.kid import KernelInceptionDistance

    feats = KIDFeatures(vgg, batch=3)
    real = eb.portraits([eb.REFERENCE_SEED_BASE + i for i in range(6)], 32)
    fake = real.flip(-1).roll(4, dims=-2)
    f = feats(real)
    assert f.shape == (6, 1024) and (f >= 0).all()
    assert torch.equal(f[:2], feats(real[:2]))  # batch-independent
    metric = KernelInceptionDistance(feature=feats, subsets=1, subset_size=6)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    mean, _ = metric.compute()
    assert kid(feats(fake), f, subsets=0).kid == pytest.approx(float(mean), rel=1e-4)
    assert "Inception" in KID_NOTE


def test_settings_are_checked_and_passed_through():
    from i2score.runs.config import Schedule

    sched = Schedule.parse("3+4")
    assert eb.embed_kwargs(sched, {"embed": {"init": "mean", "steps_n": 0}}) == {
        "steps_w": 3, "steps_n": 0, "lr_w": 0.01, "lr_n": 5.0, "init": "mean"}
    for name, setting in eb.SETTINGS.items():
        eb.check_setting(name, setting)
    assert eb.DEFAULT_SETTINGS == ("mean", "encoder", "mean-w-only") and set(eb.DEFAULT_SETTINGS) <= set(eb.SETTINGS)
    eb.check_setting("np", eb.noise_policy_setting("resample", w_offset_weight=0.1))
    with pytest.raises(ValueError, match="unknown key"):
        eb.check_setting("bad", {"embedding": {}})
    with pytest.raises(ValueError, match="unknown op 'warp'"):
        eb.check_setting("bad", {"ops": {"warp": {}}})
    with pytest.raises(ValueError, match="unknown augmentation"):
        eb.check_setting("bad", {"augment": {"warp": {}}})


def test_tiny_run_reports_every_field(small_G, vgg, tmp_path):
    from i2score.features import load_lpips
    from i2score.runs.config import Schedule

    settings: dict[str, dict[str, Any]] = {"a": {"embed": {"init": "mean", "mean_w_samples": 64}},
                "b": {"embed": {"init": "mean", "mean_w_samples": 64, "steps_n": 0},
                      "ops": {"style_mix": {"k": 2}}, "augment": {"jitter": {"sigma": 0.5}}}}
    report, pictures = eb.editability_report(small_G, settings=settings, schedule=Schedule.parse("2+2/1+1"),
                                             n_pairs=2, n_reference=4, n_samples=3, vgg=vgg, lpips=load_lpips(),
                                             command="test", log=lambda m: None)
    assert report["pairs"] == [list(p) for p in eb.pair_seeds(2)] and report["kid_note"] == KID_NOTE
    assert set(report["kid_fixed"]) == {"heldout", "truths", "samples"}
    for name in settings:
        r = report["settings"][name]
        assert set(r["edits"]) == {f"{e}/{m}" for e, m in eb.METHODS}
        for row in r["edits"].values():
            assert np.isfinite(row["kid"])
            if row["edit"] != "morph":
                assert row["lpips"] > 0 and np.isfinite(row["psnr"]) and len(row["per_pair"]) == 2
        assert set(r["augment"]) == set(eb.AUGMENT_OPS)
        assert {"recon_psnr", "edit_lpips", "kid_edits", "kid_augment"} <= set(r["summary"])
        # edit_lpips pools the forward methods' pairs; crossover (optimised) has its own median only.
        pooled = [p["lpips"] for row in r["edits"].values() if row["method"] in eb.SUMMARY_METHODS
                  for p in row["per_pair"]]
        assert r["summary"]["edit_lpips"] == pytest.approx(float(np.median(pooled)))
        assert 0 < r["summary"]["edit_lpips_floor"] < r["summary"]["edit_lpips"]
        cross = [p["lpips"] for row in r["edits"].values() if row["method"] == "crossover" for p in row["per_pair"]]
        assert len(cross) == 2 * 4 and r["summary"]["lpips_by_method"]["crossover"] == pytest.approx(
            float(np.median(cross)))
        assert set(r["summary"]["lpips_by_method"]) == {m for e, m in eb.METHODS if e in eb.EDITS}
        for e, base in r["no_edit"].items():
            # Pasting the truth into the region can only bring the reconstruction closer to it.
            assert 0 <= base["lpips_floor"] < base["lpips"], e
    assert report["settings"]["b"]["embed"]["steps_n"] == 0
    paths = eb.write_outputs(report, pictures, tmp_path / "eb")
    assert [p.name for p in paths] == ["eb.json", "eb.md", "eb-curve.png", "eb-a.png", "eb-b.png"]
    assert json.loads(paths[0].read_text())["settings"]["a"]["summary"]["edit_lpips"] > 0
    md = paths[1].read_text()
    assert md.startswith("`test`") and "| b | expression | expression_transfer |" in md
    assert "| b | hair | crossover |" in md and "LPIPS crossover" in md


def test_settings_with_one_embedding_share_it(small_G, vgg, monkeypatch):
    from i2score.features import load_lpips
    from i2score.runs.config import Schedule

    calls: list[dict[str, Any]] = []
    run_crossovers = eb._run_crossovers

    def counted(*args: Any) -> Any:
        calls.append(dict(args[-1]))
        return run_crossovers(*args)

    monkeypatch.setattr(eb, "_run_crossovers", counted)
    emb = {"init": "mean", "mean_w_samples": 64}
    settings = {"k2": {"embed": emb, "ops": {"style_mix": {"k": 2}}},
                "k6": {"embed": emb, "ops": {"style_mix": {"k": 6}}},
                "blur": {"embed": emb, "ops": {"crossover": {"blur_sigma": 0.5}}}}
    report, pictures = eb.editability_report(small_G, settings=settings, schedule=Schedule.parse("1+1/1+1"),
                                             n_pairs=2, n_reference=2, n_samples=2, vgg=vgg, lpips=load_lpips(),
                                             log=lambda m: None)
    assert torch.equal(pictures["k2"]["recon"], pictures["k6"]["recon"])
    assert torch.equal(pictures["k2"]["morph/morph"], pictures["k6"]["morph/morph"])
    assert not torch.equal(pictures["k2"]["background/style_mix"], pictures["k6"]["background/style_mix"])
    # The crossover (optimised) runs once per embedding and argument set: k2 and k6 share it.
    assert calls == [{"steps_w": 1, "steps_n": 1}, {"steps_w": 1, "steps_n": 1, "blur_sigma": 0.5}]
    assert torch.equal(pictures["k2"]["hair/crossover"], pictures["k6"]["hair/crossover"])
    assert not torch.equal(pictures["k2"]["hair/crossover"], pictures["blur"]["hair/crossover"])
    with pytest.raises(ValueError, match="n_pairs must be >= 2"):
        eb.editability_report(small_G, settings=settings, schedule=Schedule.parse("1+1"), n_pairs=1, vgg=vgg,
                              lpips=load_lpips())


@pytest.mark.parametrize(("define", "message"), [  # a --define, or another option
    ("k2", "expected NAME=JSON"),
    ("k2={bad", "Expecting property name"),
    ("k2=[1]", "must be an object"),
    ('k2={"embedding": {}}', "unknown key"),
    ("--n-pairs=1", "need at least 2 pairs"),
    ("--schedule=fast-ish", "schedule 'fast-ish'"),
])
def test_cli_rejects_bad_arguments_before_loading_anything(define, message):
    from typer.testing import CliRunner

    from i2score.cli.app import app

    args = [define] if define.startswith("--") else ["--define", define]
    result = CliRunner().invoke(app, ["bench", "editability", *args, "--model", "no-such-model"])
    flat = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and message in flat, result.output


def test_cli_settings_may_name_a_defined_setting():
    from typer.testing import CliRunner

    from i2score.cli.app import app

    k2 = 'k2={"embed": {"init": "mean"}}'
    run = CliRunner().invoke
    bad = run(app, ["bench", "editability", "--settings", "mean,k3", "--define", k2, "--model", "no-such-model"])
    flat = " ".join(bad.output.replace("│", " ").split())
    assert bad.exit_code == 2 and "unknown setting(s) ['k3']" in flat and "k2" in flat, bad.output
    # Named by --settings, the defined one passes the checks; the run stops later, at the model.
    ok = run(app, ["bench", "editability", "--settings", "k2,mean", "--define", k2, "--model", "no-such-model"])
    assert "unknown setting" not in ok.output and "no-such-model" in str(ok.exception or ok.output), ok.output
