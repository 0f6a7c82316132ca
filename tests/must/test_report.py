"""The demo report: the paper's claims are judged from the numbers given."""
from must import report

TEACHERS = {"classification": {"top1": 0.80}, "detection": {"AP": 0.40}}
STUDENT = {"classification": {"top1": 0.76}, "detection": {"AP": 0.30}}


def _transfer(must, scratch, classification):
  return {init: {"surface_normals": {"within_11.25": value, "mean_angle": 30.0 - 10 * value}}
          for init, value in (("scratch", scratch), ("classification teacher", classification),
                              ("MuST student", must))}


def test_student_claim_is_judged_per_task_against_its_teacher():
  rows = {row["task"]: row for row in report.comparison_rows(TEACHERS, STUDENT)}
  assert rows["classification"]["holds"] and round(rows["classification"]["ratio"], 2) == 0.95
  assert not rows["detection"]["holds"] and round(rows["detection"]["ratio"], 2) == 0.75


def test_transfer_claim_names_each_rival_it_beats_or_not():
  text = report.transfer_claim(_transfer(must=0.5, scratch=0.3, classification=0.6))
  assert "scratch (0.300): holds" in text
  assert "classification teacher (0.600): does not hold" in text
  assert "untested" in report.transfer_claim({"scratch": {"surface_normals": {}}})


def test_transfer_table_marks_the_best_per_column_by_direction():
  table = report.transfer_table(_transfer(must=0.5, scratch=0.3, classification=0.4))
  must_row = next(line for line in table.splitlines() if line.startswith("| MuST student"))
  scratch_row = next(line for line in table.splitlines() if line.startswith("| scratch"))
  assert must_row.count("**") == 4  # lowest angle and highest within_11.25
  assert "**" not in scratch_row


def test_write_makes_report_figure_and_reproduce_line(tmp_path):
  text = report.write(str(tmp_path), TEACHERS, STUDENT, {"world": 1.0},
                      baselines={"detection": {"AP": 0.35}},
                      transfer=_transfer(must=0.5, scratch=0.3, classification=0.4),
                      reproduce="python -m must.demo --config_dir=x")
  assert "python -m must.demo --config_dir=x" in text and report.COMMANDS_FILE in text
  assert "| detection | AP | **0.400** | 0.300 | 0.350 | 0.75 | does not hold |" in text
  assert (tmp_path / report.FIGURE_FILE).stat().st_size > 10_000


def test_pseudo_label_summary_shows_empty_and_one_class_labels():
  text = report.pseudo_label_summary({
      "detection": {"pseudo": 40, "boxes_per_image": 0.0},
      "segmentation": {"pseudo": 40, "ignored_pixel_fraction": 0.22,
                       "class_histogram": {"0": 95, "3": 5}}})
  assert "- detection: 40 images pseudo-labeled, 0.00 boxes per image" in text
  assert "22.0 % of pixels ignored, 2 classes, the most frequent (id 0) 95 %" in text
