"""A training run resumes only a checkpoint of the same data: the record every entry point writes and checks."""

import json

import pytest

from eval.checks import RUN_DATA_RECORD, InputError, resume_checkpoint
from segllava.train import SegTrainArgs
from segllava.train import resume_point as seg_resume_point
from swillava.train import DataArguments as SwiDataArguments
from swillava.train import resume_point as swi_resume_point


@pytest.fixture
def data(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"id": 0}]))
    folder = tmp_path / "seal"
    folder.mkdir()
    (folder / "direct.json").write_text("[]")
    (folder / "focus.json").write_text("[]")
    return {"data_path": train, "folder": folder}


def test_resumes_the_same_data_and_stops_on_changed_data(data, tmp_path):
    out = tmp_path / "run"
    files = {"data_path": str(data["data_path"]), "seal": str(data["folder"])}
    assert resume_checkpoint(out, files=files, settings={"aspect": "pad"}) is None  # nothing to resume
    record = json.loads((out / RUN_DATA_RECORD).read_text())
    assert set(record["files"]) == {"data_path", "seal"} and record["settings"] == {"aspect": "pad"}
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-7").mkdir()
    assert resume_checkpoint(out, files=files, settings={"aspect": "pad"}) == str(out / "checkpoint-7")

    moved = tmp_path / "moved.json"  # the same bytes elsewhere: still the same data
    moved.write_bytes(data["data_path"].read_bytes())
    same = {**files, "data_path": str(moved)}
    assert resume_checkpoint(out, files=same, settings={"aspect": "pad"}) == str(out / "checkpoint-7")
    record = json.loads((out / RUN_DATA_RECORD).read_text())
    assert record["files"]["data_path"]["path"] == str(moved)

    data["data_path"].write_text(json.dumps([{"id": 1}]))
    with pytest.raises(
        InputError, match=r"checkpoint-7 was trained on other data: data_path \(.*train.json\)"
    ):
        resume_checkpoint(out, files=files, settings={"aspect": "pad"})
    data["data_path"].write_bytes(moved.read_bytes())
    (data["folder"] / "extra.json").write_text("[]")  # a folder's JSON files are its data
    with pytest.raises(InputError, match=r"seal \(.*seal\) changed"):
        resume_checkpoint(out, files=files, settings={"aspect": "pad"})
    (data["folder"] / "extra.json").unlink()
    with pytest.raises(InputError, match=r"aspect \('pad' → 'square'\) changed"):
        resume_checkpoint(out, files=files, settings={"aspect": "square"})
    with pytest.raises(InputError, match=r"seal \(no longer given\)"):
        resume_checkpoint(out, files={"data_path": str(moved)}, settings={"aspect": "pad"})
    # a refused resume leaves the record of the checkpoint's data as it was
    assert json.loads((out / RUN_DATA_RECORD).read_text()) == record


def test_an_output_folder_without_a_record_resumes_as_before(data, tmp_path):
    out = tmp_path / "old-run"
    (out / "checkpoint-5").mkdir(parents=True)
    files = {"data_path": str(data["data_path"])}
    assert resume_checkpoint(out, files=files) == str(out / "checkpoint-5")
    assert (out / RUN_DATA_RECORD).is_file()  # from now on it is checked


def test_switch_and_seg_entry_points_exit_in_one_line(data, tmp_path, capsys):
    swi = SwiDataArguments(data_path=str(data["folder"]))
    out = tmp_path / "switch"
    assert swi_resume_point(str(out), swi) is None
    (out / "checkpoint-2").mkdir()
    (data["folder"] / "focus.json").write_text('[{"id": "new"}]')
    with pytest.raises(SystemExit) as stop:
        swi_resume_point(str(out), swi)
    assert (
        stop.value.code == 2
        and "checkpoint-2 was trained on other data: data_path" in capsys.readouterr().err
    )

    seg = SegTrainArgs(
        log_base_dir=str(tmp_path), exp_name="seg", dataset="sem_seg||refer_seg", sample_rates="3,1"
    )
    assert seg_resume_point(seg) is None
    (seg.output_dir / "checkpoint-4").mkdir()
    assert seg_resume_point(seg) == str(seg.output_dir / "checkpoint-4")
    seg.sample_rates = "1,1"
    with pytest.raises(SystemExit):
        seg_resume_point(seg)
    assert "sample_rates ('3,1' → '1,1') changed" in capsys.readouterr().err
    seg.eval_only = True  # evaluation reads the checkpoint as it is
    assert seg_resume_point(seg) == str(seg.output_dir / "checkpoint-4")
