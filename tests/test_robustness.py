"""The optional evaluations per round on real MNIST: robustness (`--robustness`: corruptions, FGSM) and stability
(`--stability`: the error barrier between two copies), the columns and files a run writes, scoring finished rounds
afterwards, and the report's sections and figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from lottery_keras import config
from lottery_keras.analysis.report import write_report
from lottery_keras.lottery import controller as imp
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.storage import read_json
from lottery_keras.train import evaluation

TINY = dict(rounds=2, iterations=60, eval_every=30, train_subset=600)


def test_the_corruptions_do_what_they_say():
    image = np.zeros((1, 5, 5, 1), np.float32)
    image[0, 0, 2, 0] = 1.0  # a dot above the centre
    rotated = evaluation._rotation(tf.constant(image), 90.0).numpy()[0, :, :, 0]
    assert rotated.argmax() in (np.ravel_multi_index((2, 0), (5, 5)), np.ravel_multi_index((2, 4), (5, 5)))
    blurred = evaluation._gaussian_blur(tf.constant(np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)))), 1.0).numpy()
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred.max() < 0.2  # spread out, mass kept
    contrast = evaluation._contrast(tf.constant(image), 0.5).numpy()
    assert contrast.mean() == pytest.approx(image.mean()) and contrast.max() - contrast.min() == pytest.approx(0.5)
    noisy = evaluation._gaussian_noise(tf.constant(image), 0.1).numpy()
    assert 0.05 < float(np.std(noisy - image)) < 0.15


def test_each_channel_of_images_of_ones_own_maps_onto_pixels_in_0_1_even_a_constant_one():
    images = np.stack([np.linspace(-3.0, 5.0, 2 * 4 * 4).reshape(2, 4, 4), np.full((2, 4, 4), 255.0)], axis=-1)
    scale = evaluation.Normalisation.spanning(images.astype(np.float32))
    pixels = scale.to_pixels(images.astype(np.float32))
    assert pixels[..., 0].min() == pytest.approx(0.0, abs=1e-6) and pixels[..., 0].max() == pytest.approx(1.0)
    np.testing.assert_allclose(pixels[..., 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(scale.to_inputs(pixels), images, rtol=1e-6, atol=1e-4)


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
    experiment = config.from_preset("es667", "mnist", "lenet300_100", **TINY)
    output = tmp_path_factory.mktemp("robust")
    options = imp.RunOptions(strategies=["magnitude_rewind", "random_rewind"], verbose=False, robustness=True)
    return imp.run_experiment(experiment, output, options=options), experiment, output


def test_every_round_records_its_robustness(robust_run):
    folder, _, _ = robust_run
    for strategy in ("magnitude_rewind", "random_rewind"):
        table = pd.read_csv(folder.results_csv(0, strategy))
        assert {"corruption_acc", "adversarial_acc"} <= set(table.columns)
        for row in table.itertuples():
            unit = folder.unit(0, strategy, row.round)
            per_corruption = pd.read_csv(unit.robustness)
            assert len(per_corruption) == 12 and set(per_corruption["severity"]) == {1, 2, 3}
            assert row.corruption_acc == pytest.approx(per_corruption["test_acc"].mean())
            assert 10 < row.adversarial_acc < row.final_test_acc  # FGSM hurts a trained network, not to nothing
            worst = per_corruption.groupby("corruption")["test_acc"].agg(lambda acc: acc.iloc[-1] <= acc.iloc[0])
            assert worst["gaussian_noise"] and worst["rotation"]  # severity 3 no better than severity 1


def test_a_copied_dense_round_shares_the_evaluation_of_its_source(robust_run):
    folder, _, _ = robust_run
    source, copy = folder.unit(0, "magnitude_rewind", 0), folder.unit(0, "random_rewind", 0)
    assert source.robustness.read_bytes() == copy.robustness.read_bytes()
    assert read_json(source.metrics)["adversarial_acc"] == read_json(copy.metrics)["adversarial_acc"]


def test_finished_rounds_are_scored_when_asked_later(robust_run, tmp_path):
    _, experiment, _ = robust_run
    plain = imp.run_experiment(experiment, tmp_path, options=imp.RunOptions(strategies=["magnitude_rewind"],
                                                                            verbose=False))
    assert "corruption_acc" not in pd.read_csv(plain.results_csv(0, "magnitude_rewind"))
    before = read_json(plain.unit(0, "magnitude_rewind", 1).metrics)
    imp.run_experiment(experiment, tmp_path, options=imp.RunOptions(strategies=["magnitude_rewind"], verbose=False,
                                                                    robustness=True))
    after = read_json(plain.unit(0, "magnitude_rewind", 1).metrics)
    assert {key: after[key] for key in before} == before and "adversarial_acc" in after
    assert "corruption_acc" in pd.read_csv(plain.results_csv(0, "magnitude_rewind"))


def test_the_report_shows_robustness_only_where_measured(robust_run, tmp_path):
    folder, experiment, _ = robust_run
    report = write_report([folder.directory], tmp_path / "robust")
    text = (report / "report.md").read_text()
    assert "## Robustness" in text and "robustness.png" in text and (report / "robustness.png").is_file()
    assert "| corruption acc | FGSM acc |" in text
    assert len(pd.read_csv(report / "robustness.csv")) == 2 * 2 * 12  # strategies × rounds × corruptions
    plain_dir = tmp_path / "plain"
    plain = imp.run_experiment(experiment, plain_dir, options=imp.RunOptions(strategies=["magnitude_rewind"],
                                                                             verbose=False))
    text = (write_report([plain.directory], tmp_path / "plain_report") / "report.md").read_text()
    assert "Robustness" not in text and "corruption acc" not in text
    assert not (tmp_path / "plain_report" / "robustness.png").exists()


def test_the_cli_flag_reaches_the_run(tmp_path, capsys):
    from lottery_keras import cli
    code = cli.main(["--dataset", "mnist", "--arch", "lenet300_100", "--rounds", "1", "--iterations", "30",
                     "--eval-every", "30", "--train-subset", "600", "--quiet", "--robustness", "--no-tfmot-check",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    run_dir = next(tmp_path.glob("mnist-lenet300_100-*"))
    assert "adversarial_acc" in read_json(RunFolder(run_dir).unit(0, "magnitude_rewind", 0).metrics)


def test_the_error_barrier_is_the_rise_above_the_ends():
    assert evaluation.error_barrier({0.0: 90.0, 0.25: 85.0, 0.5: 80.0, 0.75: 88.0, 1.0: 92.0}) == pytest.approx(11.0)
    assert evaluation.error_barrier({0.0: 90.0, 0.5: 91.0, 1.0: 90.0}) == 0.0  # the ends are on the path


def test_stability_trains_a_second_copy_and_measures_the_barrier(tmp_path):
    experiment = config.from_preset("es667", "mnist", "lenet300_100", **TINY)
    options = imp.RunOptions(strategies=["magnitude_rewind"], verbose=False, stability=True)
    folder = imp.run_experiment(experiment, tmp_path, options=options)
    table = pd.read_csv(folder.results_csv(0, "magnitude_rewind"))
    assert "instability" in table and table["instability"].notna().all()
    for row in table.itertuples():
        path = pd.read_csv(folder.unit(0, "magnitude_rewind", row.round).stability)
        assert path["alpha"].tolist() == list(evaluation.INTERPOLATION_POINTS)
        assert path["test_acc"].iloc[0] == pytest.approx(row.final_test_acc)  # α = 0: the trained ticket itself
        assert path["test_acc"].iloc[-1] != path["test_acc"].iloc[0]  # another data order, another network
        assert row.instability == pytest.approx(evaluation.error_barrier(dict(zip(path["alpha"], path["test_acc"]))))
    text = (write_report([folder.directory], tmp_path / "report") / "report.md").read_text()
    assert "## Stability" in text and "(stability.png)" in text and "| instability |" in text
    first = table.iloc[0]
    summary_row = f"| 0 | 100.00 | {first.instability:.2f} [{first.instability:.2f}, {first.instability:.2f}] |"
    assert summary_row in text.split("## Stability")[1]  # one trial: mean, min and max coincide
