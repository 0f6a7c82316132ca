"""The demo report: the paper's claims are judged from the numbers given, over seeds."""
import pytest
import tensorflow as tf

from must import report

TEACHERS = {"classification": {"top1": 0.80}, "detection": {"AP": 0.40}}
STUDENT = {"classification": {"top1": 0.76}, "detection": {"AP": 0.30}}


def _transfer(must, scratch, classification):
  return {init: {"surface_normals": {"within_11.25": value, "mean_angle": 30.0 - 10 * value}}
          for init, value in (("scratch", scratch), ("classification teacher", classification),
                              ("MuST student", must))}


def test_mean_and_spread_over_seeds():
  mean, spread = report.mean_and_spread([0.5, 0.7, 0.6])
  assert mean == pytest.approx(0.6) and spread == pytest.approx(0.1)  # half of max - min
  assert report.format_stat([0.5, 0.7, 0.6]) == "0.600 ± 0.100"
  assert report.format_stat([0.612]) == "0.612"  # one seed: just the value
  assert report.format_stat([0.5, 0.7], 2) == "0.60 ± 0.10"


@pytest.mark.parametrize("for_mean,per_seed,expected", [
    (True, [True, True], report.HOLDS),
    (False, [False, False], report.FAILS),
    (True, [True, False], report.UNDECIDED),
    (False, [True, False], report.UNDECIDED),
    (False, [True, True], report.UNDECIDED),
])
def test_verdict_needs_the_mean_and_every_seed(for_mean, per_seed, expected):
  assert report.verdict(for_mean, per_seed) == expected


def test_student_claim_is_judged_per_task_for_the_mean_and_every_seed():
  teachers = {0: {"classification": {"top1": 0.80}, "detection": {"AP": 0.40},
                  "depth": {"delta_1.25": 0.50}},
              1: {"classification": {"top1": 0.80}, "detection": {"AP": 0.40},
                  "depth": {"delta_1.25": 0.50}}}
  student = {0: {"classification": {"top1": 0.76}, "detection": {"AP": 0.30},
                 "depth": {"delta_1.25": 0.50}},   # depth: 1.00 of the teacher
             1: {"classification": {"top1": 0.74}, "detection": {"AP": 0.20},
                 "depth": {"delta_1.25": 0.40}}}   # depth: 0.80 of the teacher
  rows = {row["task"]: row for row in report.comparison_rows(teachers, student)}
  assert rows["classification"]["verdict"] == report.HOLDS  # 0.95 and 0.925
  assert rows["detection"]["verdict"] == report.FAILS  # 0.75 and 0.50
  assert rows["depth"]["verdict"] == report.UNDECIDED  # 1.00 and 0.80 (mean 0.90)
  assert rows["depth"]["ratio"] == pytest.approx([1.0, 0.8])
  table = report.comparison_table(list(rows.values()))
  assert "| classification | top1 | **0.800 ± 0.000** | 0.750 ± 0.010 |  | 0.94 ± 0.01 | holds |" \
      in table
  details = report.undecided_details(list(rows.values()))
  assert "depth is undecided" in details and "seed 0: 1.00 (0.500 / 0.500)" in details
  assert "seed 1: 0.80 (0.400 / 0.500)" in details and "classification" not in details


CLAIM = {"task": "surface_normals", "rivals": ["scratch", "classification teacher"]}


def test_one_seed_gives_plain_values_and_no_undecided_claim():
  rows = {row["task"]: row for row in report.comparison_rows({0: TEACHERS}, {0: STUDENT})}
  assert rows["classification"]["verdict"] == report.HOLDS
  assert rows["detection"]["verdict"] == report.FAILS
  assert round(rows["detection"]["ratio"][0], 2) == 0.75


def test_transfer_claim_names_each_rival_it_beats_or_not():
  text = report.transfer_claim({0: _transfer(must=0.5, scratch=0.3, classification=0.6)}, CLAIM)
  assert "scratch (0.300): holds" in text
  assert "classification teacher (0.600): does not hold" in text
  assert "untested" in report.transfer_claim({0: {"scratch": {"surface_normals": {}}}}, CLAIM)
  assert "No transfer claim" in report.transfer_claim({0: {}}, None)


def test_transfer_claim_over_seeds_lists_the_seeds_of_an_undecided_rival():
  transfer = {0: _transfer(must=0.5, scratch=0.3, classification=0.4),
              1: _transfer(must=0.4, scratch=0.2, classification=0.5)}
  verdicts = {c["rival"]: c["verdict"] for c in report.transfer_verdicts(transfer, CLAIM)}
  assert verdicts == {"scratch": report.HOLDS, "classification teacher": report.UNDECIDED}
  text = report.transfer_claim(transfer, CLAIM)
  assert "scratch (0.250 ± 0.050): holds" in text
  assert ("classification teacher (0.450 ± 0.050): undecided (per seed, MuST vs "
          "classification teacher: seed 0 0.500 vs 0.400, seed 1 0.400 vs 0.500)") in text


def test_transfer_table_marks_the_best_mean_per_column_by_direction():
  table = report.transfer_table({0: _transfer(must=0.5, scratch=0.3, classification=0.4),
                                 1: _transfer(must=0.2, scratch=0.3, classification=0.4)})
  rows = {line.split(" | ")[0]: line for line in table.splitlines()}
  # The best mean within_11.25 (0.400) and the lowest mean angle (26.000), both spread 0.
  assert rows["| classification teacher"].count("**") == 4
  assert "0.350 ± 0.150" in rows["| MuST student"] and "**" not in rows["| MuST student"]
  assert "26.500 ± 1.500" in rows["| MuST student"]


def test_claims_sentence_sorts_every_claim_into_one_verdict():
  teachers = {0: TEACHERS, 1: TEACHERS}
  student = {0: STUDENT, 1: {"classification": {"top1": 0.6}, "detection": {"AP": 0.1}}}
  transfer = {0: _transfer(must=0.5, scratch=0.3, classification=0.6),
              1: _transfer(must=0.5, scratch=0.3, classification=0.6)}
  text = report.claims_sentence(report.comparison_rows(teachers, student), transfer, [0, 1],
                                CLAIM)
  assert text == (
      "Over 2 training seeds (0, 1), the paper's claims that hold: MuST backbone beats "
      "scratch on surface_normals; that do not hold: student >= 0.9 of teacher on detection, "
      "MuST backbone beats classification teacher on surface_normals; undecided: student >= "
      "0.9 of teacher on classification.")


def test_timing_share_is_step_seconds_over_wall_times_slots():
  records = [{"stage": "world", "seconds": 10.0},
             {"stage": "teachers", "seconds": 100.0, "train_step_seconds": 150.0,
              "parallel_slots": 2},
             {"stage": "teachers", "seconds": 50.0, "train_step_seconds": 50.0,
              "parallel_slots": 2},  # a second seed
             {"stage": "student", "seconds": 40.0, "train_step_seconds": 30.0,
              "parallel_slots": 1}]
  rows = {row["stage"]: row for row in report.timing_rows(records)}
  assert rows["world"]["share"] is None and rows["world"]["step_seconds"] is None
  assert rows["teachers"]["seconds"] == 150.0 and rows["teachers"]["step_seconds"] == 200.0
  assert rows["teachers"]["share"] == pytest.approx(200 / (150 * 2))
  assert rows["student"]["share"] == pytest.approx(0.75)
  # Over the whole demo: 230 step seconds / (10 x 1 + 150 x 2 + 40 x 1).
  assert rows["total"]["share"] == pytest.approx(230 / 350)
  table = report.timings_table(records)
  assert ("| stage | wall seconds | parallel slots | training-step seconds | "
          "share of wall time in training steps |") in table
  assert "| teachers | 150.0 | 2 | 200.0 | 67 % |" in table
  assert "| world | 10.0 | 1 |  |  |" in table
  assert "| **total** | 200.0 |  | 230.0 | 66 % |" in table
  assert "Share = training-step seconds" in table


def test_write_makes_report_figure_and_reproduce_line(tmp_path):
  text = report.write(str(tmp_path), {0: TEACHERS}, {0: STUDENT},
                      [{"stage": "world", "seconds": 1.0}],
                      baselines={0: {"detection": {"AP": 0.35}}},
                      transfer={0: _transfer(must=0.5, scratch=0.3, classification=0.4)},
                      transfer_claim_config=CLAIM, reproduce="python -m must.demo --config_dir=x")
  assert "python -m must.demo --config_dir=x" in text and report.COMMANDS_FILE in text
  assert "| detection | AP | **0.400** | 0.300 | 0.350 | 0.75 | does not hold |" in text
  assert "With one training seed (0), the paper's claims that hold:" in text
  assert (tmp_path / report.FIGURE_FILE).stat().st_size > 10_000


def test_write_goes_to_any_gfile_path(tmp_path, monkeypatch):
  # ram:// stands in for gs://; the old open() would write a local "ram:" folder here.
  monkeypatch.chdir(tmp_path)
  text = report.write("ram://report", {0: TEACHERS}, {0: STUDENT}, [])
  with tf.io.gfile.GFile(f"ram://report/{report.REPORT_FILE}") as f:
    assert f.read() == text
  assert tf.io.gfile.stat(f"ram://report/{report.FIGURE_FILE}").length > 10_000


def test_write_over_seeds_states_the_spread_and_draws_error_bars(tmp_path):
  student = {0: STUDENT, 1: {"classification": {"top1": 0.70}, "detection": {"AP": 0.30}}}
  text = report.write(str(tmp_path), {0: TEACHERS, 1: TEACHERS}, student,
                      [{"stage": "world", "seconds": 1.0}],
                      transfer={0: _transfer(must=0.5, scratch=0.3, classification=0.4),
                                1: _transfer(must=0.3, scratch=0.4, classification=0.2)},
                      pseudo_labels={0: {"detection": {"pseudo": 4, "boxes_per_image": 0.5}},
                                     1: {"detection": {"pseudo": 4, "boxes_per_image": 0.25}}})
  assert "Over 2 training seeds (0, 1)" in text and report.SPREAD in text
  assert "| classification | top1 | **0.800 ± 0.000** | 0.730 ± 0.030 |" in text
  assert "classification is undecided; MuST / teacher per seed: seed 0: 0.95" in text
  assert "Seed 1's teachers:" in text and "0.25 boxes per image" in text
  assert (tmp_path / report.FIGURE_FILE).stat().st_size > 10_000


def test_figure_takes_equal_values_over_seeds(tmp_path):
  # The mean of three equal values can round above their max: no negative error bar.
  teachers = {seed: {"classification": {"top1": 0.1}} for seed in range(3)}
  report.write(str(tmp_path), teachers, teachers, [], transfer={
      seed: _transfer(must=0.1, scratch=0.1, classification=0.1) for seed in range(3)})
  assert (tmp_path / report.FIGURE_FILE).stat().st_size > 10_000


def test_pseudo_label_summary_shows_empty_and_one_class_labels():
  text = report.pseudo_label_summary({
      "detection": {"pseudo": 40, "boxes_per_image": 0.0},
      "segmentation": {"pseudo": 40, "ignored_pixel_fraction": 0.22,
                       "class_histogram": {"0": 95, "3": 5}}})
  assert "- detection: 40 images pseudo-labeled, 0.00 boxes per image" in text
  assert "22.0 % of pixels ignored, 2 classes, the most frequent (id 0) 95 %" in text


def _round(student: dict, normals: float) -> dict:
  return {"student": student, "transfer": {"surface_normals": {"within_11.25": normals}}}


def test_rounds_table_judges_the_last_round_against_the_first_per_task_and_seed(tmp_path):
  teachers = {seed: {**TEACHERS, "depth": {"delta_1.25": 0.5}} for seed in (0, 1)}
  first = {0: {"classification": {"top1": 0.70}, "detection": {"AP": 0.30},
               "depth": {"delta_1.25": 0.40}},
           1: {"classification": {"top1": 0.60}, "detection": {"AP": 0.20},
               "depth": {"delta_1.25": 0.40}}}
  # Round 2: classification better in both seeds, detection worse in both,
  # depth better on the mean but worse in seed 1; the transfer better in both.
  second = {0: {"classification": {"top1": 0.75}, "detection": {"AP": 0.25},
                "depth": {"delta_1.25": 0.60}},
            1: {"classification": {"top1": 0.65}, "detection": {"AP": 0.10},
                "depth": {"delta_1.25": 0.38}}}
  rounds = {1: {s: _round(first[s], 0.3) for s in (0, 1)},
            2: {s: _round(second[s], 0.4 + 0.1 * s) for s in (0, 1)}}
  text = report.rounds_section(teachers, rounds, str(tmp_path))
  assert "| task | metric | teachers | round 1 student | round 2 student | " \
      "round 2 beats round 1 |" in text
  assert "| classification | top1 | 0.800 ± 0.000 | 0.650 ± 0.050 | 0.700 ± 0.050 | holds |" \
      in text
  assert "| detection | AP | 0.400 ± 0.000 | 0.250 ± 0.050 | 0.175 ± 0.075 | does not hold |" \
      in text
  assert "| depth | delta_1.25 | 0.500 ± 0.000 | 0.400 ± 0.000 | 0.490 ± 0.110 | undecided |" \
      in text
  assert "| surface_normals | within_11.25 | 0.300 ± 0.000 | 0.450 ± 0.050 | holds |" in text
  assert (tmp_path / report.ROUNDS_FIGURE).stat().st_size > 10_000
  without_transfer = {r: {s: {**rounds[r][s], "transfer": {}} for s in (0, 1)} for r in rounds}
  text = report.rounds_section(teachers, without_transfer, str(tmp_path))
  assert "| classification | top1 |" in text and "Transfer of each round" not in text
  # One round has nothing to compare: no section, and write leaves it out.
  assert report.rounds_section(teachers, {1: rounds[1]}, str(tmp_path)) == ""
  written = report.write(str(tmp_path / "report"), teachers, first, [], rounds=rounds)
  assert "## Self-training rounds" in written and f"]({report.ROUNDS_FIGURE})" in written
  assert "## Self-training rounds" not in report.write(str(tmp_path / "one"), teachers, first,
                                                       [], rounds=None)
