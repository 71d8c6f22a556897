"""The benchmark runners end to end on the tiny base, each on a few items in its benchmark's real layout.

Every benchmark gets LLaVA-1.5's file names and formats (question JSONL / ScienceQA conversations,
ground-truth files, image folders) with toy-world images. The model runs are real (random tiny
weights, so the scores are arbitrary); the scoring tests replace the answers with hand-written ones
whose scores are computed by hand in the comments.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from eval.run import main
from eval.runner import chunk

ROOT = Path(__file__).resolve().parent.parent
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def image(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == src.suffix:
        shutil.copy(src, dst)
    else:
        Image.open(src).save(dst)
    return dst.name


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory, toy_world) -> Path:
    """`playground/data/eval` with every benchmark's layout, 3-6 questions each."""
    root = tmp_path_factory.mktemp("eval_data")
    toy = sorted((toy_world["playground"] / "data/toy/images/val").glob("*.jpg"))

    # VQAv2: test-dev questions, the full test2015 list (one more id), COCO file names; a val split with annotations.
    d = root / "vqav2"
    dev = [
        {"question_id": 262144000 + i, "image": image(toy[i], d / "test2015" / f"COCO_test2015_{i:012d}.jpg"),
         "text": f"What color is the object {i}?" + SHORT, "category": "default"}
        for i in range(3)
    ]  # fmt: skip
    jsonl(d / "llava_vqav2_mscoco_test-dev2015.jsonl", dev)
    jsonl(d / "llava_vqav2_mscoco_test2015.jsonl", [*dev, {**dev[0], "question_id": 999}])
    val = [{**q, "question_id": 1000 + i, "image": image(toy[i], d / "val2014" / f"COCO_val2014_{i:012d}.jpg")}
           for i, q in enumerate(dev)]  # fmt: skip
    jsonl(d / "llava_vqav2_mscoco_val2014.jsonl", val)
    dump(
        d / "v2_mscoco_val2014_annotations.json",
        {"annotations": [
            {"question_id": 1000, "answer_type": "other", "answers": [{"answer": a} for a in ["red"] * 3 + ["blue"] * 7]},
            {"question_id": 1001, "answer_type": "yes/no", "answers": [{"answer": "yes"}] * 10},
            {"question_id": 1002, "answer_type": "number", "answers": [{"answer": a} for a in ["2"] * 2 + ["3"] * 8]},
        ]},
    )  # fmt: skip

    # GQA: string ids, data/images, the official questions file (one unbalanced question).
    d = root / "gqa"
    jsonl(
        d / "llava_gqa_testdev_balanced.jsonl",
        [{"question_id": f"20{i}", "image": image(toy[i], d / "data/images" / f"n{i}.jpg"),
          "text": f"Is there a star {i}?" + SHORT} for i in range(4)],
    )  # fmt: skip
    dump(
        d / "data/testdev_balanced_questions.json",
        {"200": {"answer": "yes", "isBalanced": True}, "201": {"answer": "no", "isBalanced": True},
         "202": {"answer": "red", "isBalanced": True}, "203": {"answer": "no", "isBalanced": False}},
    )  # fmt: skip

    # TextVQA: OCR-token prompts; as in LLaVA's file the image id is the question_id (two questions on img0000);
    # train_images/<image_id>.jpg; TextVQA_0.5.1_val.json with TextVQA's own question ids.
    d = root / "textvqa"
    rows, data = [], []
    for i, image_id in enumerate(("img0000", "img0000", "img0001")):
        q = f"What does the sign say {i}?"
        rows.append({"question_id": image_id, "image": image(toy[i], d / "train_images" / f"{image_id}.jpg"),
                     "text": f"{q}\nReference OCR token: STOP, {i}" + SHORT})  # fmt: skip
        data.append(
            {"question_id": 34602 + i, "image_id": image_id, "question": q.lower(), "answers": ["stop"] * 10}
        )
    jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", rows)
    dump(d / "TextVQA_0.5.1_val.json", {"data": data})

    # POPE: ids unique over the test file, labels per split numbered from 1 and in another order.
    d = root / "pope"
    rows, qid = [], 1
    for s, split in enumerate(("adversarial", "popular", "random")):
        labels = []
        for k, (obj, label) in enumerate((("dog", "yes"), ("cat", "no"))):
            img = image(toy[2 * s + k], d / "val2014" / f"COCO_val2014_{2 * s + k:012d}.jpg")
            rows.append({"question_id": qid, "image": img, "text": f"Is there a {obj} in the image?" + SHORT,
                         "category": split})  # fmt: skip
            labels.append(
                {
                    "question_id": k + 1,
                    "image": img,
                    "text": f"Is there a {obj} in the image?",
                    "label": label,
                }
            )
            qid += 1
        jsonl(d / "coco" / f"coco_pope_{split}.json", labels[::-1])
    jsonl(d / "llava_pope_test.jsonl", rows)

    # MME: question_id = category/file (repeated: two questions per image); both GT folder layouts.
    d = root / "MME" / "MME_Benchmark_release_version"
    image(toy[0], d / "existence" / "000000000139.jpg")
    (d / "existence" / "000000000139.txt").write_text(
        "Is there a star in this image? Please answer yes or no.\tYes\n"
        "Is there a train in this image? Please answer yes or no.\tNo\n"
    )
    image(toy[1], d / "code_reasoning" / "images" / "0020.png")
    (d / "code_reasoning" / "questions_answers_YN").mkdir(parents=True)
    (d / "code_reasoning" / "questions_answers_YN" / "0020.txt").write_text(
        "Is a python code shown in the picture? Please answer yes or no.\tYes\n"
        "Is a C++ code shown in the picture? Please answer yes or no.\tNo\n"
    )
    jsonl(
        root / "MME" / "llava_mme.jsonl",
        [
            {"question_id": "existence/000000000139.jpg", "image": "existence/000000000139.jpg",
             "text": "Is there a star in this image? Please answer yes or no." + SHORT, "category": "existence"},
            {"question_id": "existence/000000000139.jpg", "image": "existence/000000000139.jpg",
             "text": "Is there a train in this image? Please answer yes or no." + SHORT, "category": "existence"},
            {"question_id": "code_reasoning/0020.png", "image": "code_reasoning/images/0020.png",
             "text": "Is a python code shown in the picture? Please answer yes or no." + SHORT, "category": "code_reasoning"},
            {"question_id": "code_reasoning/0020.png", "image": "code_reasoning/images/0020.png",
             "text": "Is a C++ code shown in the picture? Please answer yes or no." + SHORT, "category": "code_reasoning"},
        ],
    )  # fmt: skip

    # ScienceQA: LLaVA conversation records (one text-only), pid_splits.json, problems.json.
    d = root / "scienceqa"
    records, problems = [], {}
    for i, pid in enumerate(("4", "7", "12")):
        rec = {"id": pid, "conversations": [
            {"from": "human", "value": f"<image>\nContext: none.\nQuestion: which {i}?\nOptions: (A) a (B) b (C) c"},
            {"from": "gpt", "value": "The answer is A."}]}  # fmt: skip
        if pid != "12":
            rec["image"] = f"{pid}/" + image(toy[i], d / "images/test" / pid / "image.png")
        else:
            rec["conversations"][0]["value"] = rec["conversations"][0]["value"].replace("<image>\n", "")
        records.append(rec)
        problems[pid] = {
            "choices": ["a", "b", "c"],
            "answer": i % 3,
            "image": "image.png" if pid != "12" else None,
        }
    dump(d / "llava_test_CQM-A.json", records)
    dump(d / "pid_splits.json", {"test": ["4", "7", "12"], "train": ["1"]})
    dump(d / "problems.json", problems)

    # SEED-Bench: llava-seed-bench.jsonl (int ids), SEED-Bench.json (string ids, one video question not asked).
    d = root / "seed_bench"
    jsonl(
        d / "llava-seed-bench.jsonl",
        [{"question_id": 101669 + i, "image": "SEED-Bench-image/" + image(toy[i], d / "SEED-Bench-image" / f"{i}.jpg"),
          "text": f"Which object {i}?\nA. star\nB. cross\nC. ring\nD. disc" + LETTER, "category": "Instance Identity"}
         for i in range(3)],
    )  # fmt: skip
    dump(
        d / "SEED-Bench.json",
        {"question_type": {"Scene Understanding": 1, "Instance Identity": 2},
         "questions": [{"question_id": str(101669 + i), "answer": "ABC"[i], "question_type_id": 1 + (i > 0),
                        "data_type": "image"} for i in range(3)]
         + [{"question_id": "v1", "answer": "A", "question_type_id": 1, "data_type": "video"}]},
    )  # fmt: skip

    # MM-Vet: int ids, images/v1_<i>.png.
    d = root / "mm-vet"
    jsonl(
        d / "llava-mm-vet.jsonl",
        [{"question_id": i, "image": image(toy[i], d / "images" / f"v1_{i}.png"), "text": f"Describe object {i}."}
         for i in range(2)],
    )  # fmt: skip

    # V*Bench: the toy world's V*-style folder, in the real layout.
    shutil.copytree(toy_world["playground"] / "data/eval/vstar_toy", root / "vstar_bench")
    return root


def run(bench: str, tiny_base: Path, eval_root: Path, *extra: str) -> dict:
    return main(
        [bench, "--model-path", str(tiny_base), "--data-root", str(eval_root), "--device", "cpu",
         "--max-new-tokens", "3", "--batch-size", "4", "--quiet", *extra]
    )  # fmt: skip


def merged_texts(summary: dict) -> dict:
    rows = [json.loads(line) for line in Path(summary["answers_file"]).read_text().splitlines()]
    return {r["question_id"]: r["text"] for r in rows}


N_QUESTIONS = {
    "vqav2": 3,
    "gqa": 4,
    "textvqa": 3,
    "pope": 6,
    "mme": 4,
    "sqa": 3,
    "seed": 3,
    "mmvet": 2,
    "vstar": 6,
}


@pytest.mark.parametrize("bench", sorted(N_QUESTIONS))
def test_runner_end_to_end(bench, tiny_base, eval_root):
    summary = run(bench, tiny_base, eval_root)
    check, metrics = summary["answer_check"], summary["metrics"]
    assert summary["status"] == "scored"
    assert check["questions"] == check["answered"] == N_QUESTIONS[bench]
    assert check["missing"] == check["duplicates"] == check["unknown_ids"] == check["errors"] == 0
    assert Path(summary["answers_file"]).name == "merge.jsonl"
    assert (
        json.loads((Path(summary["answers_file"]).parent / "metrics.json").read_text())["metrics"] == metrics
    )
    texts = merged_texts(summary)
    if bench == "vqav2":  # test-dev: no local score, a submission over the whole test2015 list
        assert metrics["score"] is None and "EvalAI" in metrics["reason"]
        upload = json.loads(Path(metrics["files"]["submission"]).read_text())
        assert [u["question_id"] for u in upload] == [262144000, 262144001, 262144002, 999]
        assert upload[-1]["answer"] == ""
    elif bench == "gqa":
        preds = json.loads((eval_root / "gqa/data/testdev_balanced_predictions.json").read_text())
        assert preds == [{"questionId": q, "prediction": t.rstrip(".").lower()} for q, t in texts.items()]
        assert metrics["n_scored"] == 3  # question 203 is not balanced
    elif bench == "pope":
        assert {s: m["n"] for s, m in metrics["splits"].items()} == {
            "adversarial": 2,
            "popular": 2,
            "random": 2,
        }
        assert metrics["unlabeled_questions"] == 0
    elif bench == "mme":
        assert summary["prepare"]["repeated_question_ids"] == 2
        assert (
            set(metrics["categories"]) == {"existence", "code_reasoning"} and metrics["no_ground_truth"] == 0
        )
        lines = (
            (eval_root / f"MME/eval_tool/answers/{summary['ckpt']}/existence.txt").read_text().splitlines()
        )
        assert [line.split("\t")[:3] for line in lines] == [
            ["000000000139.txt", "Is there a star in this image? Please answer yes or no.", "Yes"],
            ["000000000139.txt", "Is there a train in this image? Please answer yes or no.", "No"],
        ]
        flat = [json.loads(line) for line in (eval_root / f"MME/answers/{summary['ckpt']}.jsonl").open()]
        assert [r["question_id"] for r in flat] == ["existence/000000000139.jpg"] * 2 + [
            "code_reasoning/0020.png"
        ] * 2
    elif bench == "sqa":
        assert (metrics["n_img"], metrics["n_all"]) == (2, 3)
        prepared = [
            json.loads(line) for line in (Path(summary["answers_file"]).parent / "questions.jsonl").open()
        ]
        assert prepared[0]["text"].endswith("(C) c" + LETTER) and "image" not in prepared[2]
    elif bench == "seed":
        assert metrics["n_image"] == 3 and set(metrics["per_data_type"]) == {"image"}
    elif bench == "mmvet":
        assert set(json.loads(Path(metrics["files"]["submission"]).read_text())) == {"v1_0", "v1_1"}
    elif bench == "vstar":
        rows = [json.loads(line) for line in Path(summary["answers_file"]).read_text().splitlines()]
        for r in rows:
            losses = r["metadata"]["option_losses"]
            options = json.loads((eval_root / "vstar_bench" / f"{r['question_id']}.json").read_text())[
                "options"
            ]
            assert r["text"] == options[losses.index(min(losses))]
        assert sum(metrics["n_per_category"].values()) == 6
    if metrics.get("score") is not None:
        assert 0.0 <= metrics["score"] <= (2000.0 if bench == "mme" else 100.0)


def test_cos_mode_and_missing_image(tiny_base, eval_root, tmp_path):
    """The ROI two-stage mode on TextVQA, with one image deleted: recorded, counted, scored as empty."""
    bench_dir = tmp_path / "textvqa"
    shutil.copytree(eval_root / "textvqa", bench_dir)
    (bench_dir / "train_images/img0001.jpg").unlink()
    summary = run("textvqa", tiny_base, eval_root, "--mode", "cos", "--roi-path", str(tiny_base),
                  "--roi-max-new-tokens", "4", "--bench-dir", str(bench_dir))  # fmt: skip
    check = summary["answer_check"]
    assert summary["ckpt"] == tiny_base.name + "-cos"
    assert check["answered"] == 3 and check["errors"] == 1 and check["empty"] >= 1
    assert "image not found" in check["examples"]["errors"][0]
    rows = [json.loads(line) for line in Path(summary["answers_file"]).read_text().splitlines()]
    assert all({"roi_box", "roi_text", "fallback"} <= set(r["metadata"]) for r in rows)
    assert summary["metrics"]["ocr_prompts"] == 3 and summary["metrics"]["n_scored"] == 3


def test_vstar_cos_mode(tiny_base, eval_root):
    """V*Bench with the ROI two stages: options scored after the stage-2 prompt, the ROI recorded."""
    args = ("--mode", "cos", "--roi-path", str(tiny_base), "--roi-max-new-tokens", "4")
    summary = run("vstar", tiny_base, eval_root, *args)
    assert summary["answer_check"]["answered"] == 6 and summary["metrics"]["unscorable_answers"] == 0
    for r in map(json.loads, Path(summary["answers_file"]).read_text().splitlines()):
        assert {"option_losses", "choice", "roi_box", "roi_text", "fallback"} <= set(r["metadata"])


def test_cos_mode_refuses_a_region_only_roi_adapter(tiny_base, eval_root, tmp_path):
    """An adapter trained on the region turn alone has no stage-2 answer: one line, before any model loads."""
    adapter = tmp_path / "roi-region-only"
    adapter.mkdir()
    (adapter / "roi_config.json").write_text(json.dumps({"wording": "where", "region_only": True}))
    with pytest.raises(SystemExit, match=r"trained on the region turn alone .* evaluate it inside FaST"):
        run("vstar", tiny_base, eval_root, "--mode", "cos", "--roi-path", str(adapter))


def test_chunks_wait_then_merge(tiny_base, eval_root):
    """Chunk 1 of 2 alone does not score; chunk 0 completes the set and the merge covers both."""
    common = ("--ckpt-name", "chunked", "--num-chunks", "2")
    assert run("pope", tiny_base, eval_root, *common, "--chunk-idx", "1")["status"] == "waiting"
    summary = run("pope", tiny_base, eval_root, *common, "--chunk-idx", "0")
    assert summary["status"] == "scored" and summary["answer_check"]["answered"] == 6
    assert len(Path(summary["answers_file"]).read_text().splitlines()) == 6


@pytest.mark.parametrize(("n_rows", "n_chunks"), [(6, 2), (7, 3), (2, 4), (0, 2)])
def test_chunks_are_contiguous_near_equal_and_cover_every_row(n_rows, n_chunks):
    """LLaVA's split (the answerers' and the merge step's completeness check use the same `chunk`)."""
    rows = list(range(n_rows))
    parts = [chunk(rows, n_chunks, k) for k in range(n_chunks)]
    assert [r for p in parts for r in p] == rows
    assert all(len(p) <= -(-n_rows // n_chunks) for p in parts)
    with pytest.raises(ValueError, match="outside"):
        chunk(rows, n_chunks, n_chunks)


def test_shell_runner_with_parallel_chunks(tiny_base, eval_root):
    """`eval/gqa.sh` from another directory, two chunk processes (--gpus), then merge and score."""
    out = subprocess.run(
        ["bash", str(ROOT / "eval/gqa.sh"), "--model-path", str(tiny_base), "--data-root", str(eval_root),
         "--device", "cpu", "--max-new-tokens", "2", "--gpus", "a,b", "--ckpt-name", "sh"],
        cwd="/", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "answers: 4/4 answered; no problems" in out.stdout
    answers = eval_root / "gqa/answers/llava_gqa_testdev_balanced/sh"
    assert sorted(p.name for p in answers.glob("2_*.jsonl")) == ["2_0.jsonl", "2_1.jsonl"]
    assert len((answers / "merge.jsonl").read_text().splitlines()) == 4


# ----------------------------------------------------------------------------------------------------------
# Scoring hand-written answers (no model): exact numbers, computed by hand
# ----------------------------------------------------------------------------------------------------------


def score(bench: str, eval_root: Path, answers: list[dict], *extra: str) -> dict:
    path = eval_root / f"handmade_{bench}.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    return main([bench, "--model-path", "none", "--ckpt-name", "handmade", "--data-root", str(eval_root),
                 "--device", "cpu", "--answers-file", str(path), *extra])  # fmt: skip


def test_pope_joins_by_id_not_order(eval_root):
    # Answers in reverse order, ids 1..6 = (adv dog yes, adv cat no, pop dog yes, pop cat no, rnd dog yes, rnd cat no).
    # adversarial: "Yes" (yes) / "No, there is not." (no) -> both right: P = R = F1 = 100.
    # popular: "No" on a yes, "No" on a no -> TP 0, FN 1, TN 1: F1 = 0, acc 50.
    # random: "Yes" on both -> TP 1, FP 1: P 50, R 100, F1 = 66.67, acc 50.
    texts = {1: "Yes", 2: "No, there is not.", 3: "No", 4: "No", 5: "Yes", 6: "Yes"}
    m = score("pope", eval_root, [{"question_id": q, "text": t} for q, t in reversed(texts.items())])[
        "metrics"
    ]
    assert m["splits"]["adversarial"]["f1"] == 100.0
    assert m["splits"]["popular"]["f1"] == 0.0 and m["splits"]["popular"]["accuracy"] == 50.0
    assert m["splits"]["random"]["f1"] == pytest.approx(66.67) and m["splits"]["random"]["yes_ratio"] == 100.0
    assert m["score"] == pytest.approx((100 + 0 + 66.67) / 3, abs=0.01)


def test_vqav2_val_accuracy(eval_root):
    # 1000: "Red." -> EvalAI "red"; answers 3 red / 7 blue, not unanimous -> k=3 -> 0.9.
    # 1001: "Yes" -> EvalAI "yes"; unanimous "yes" -> exact -> 1.0.
    # 1002: "two" -> EvalAI "2"; 2 of 10 -> 0.6.        mean = 2.5 / 3 = 83.33
    answers = [{"question_id": 1000, "text": "Red."}, {"question_id": 1001, "text": "Yes"},
               {"question_id": 1002, "text": "two"}]  # fmt: skip
    m = score("vqav2", eval_root, answers, "--split", "llava_vqav2_mscoco_val2014", "--image-folder", "x")[
        "metrics"
    ]
    assert m["score"] == pytest.approx(83.33)
    assert m["per_answer_type"] == {"number": 60.0, "other": 90.0, "yes/no": 100.0}


def test_gqa_textvqa_seed_sqa_mme_scores(eval_root):
    # GQA: "Yes." -> yes ok, "no" ok, "Red" -> red ok; 203 unbalanced is ignored -> 100.
    gqa = [{"question_id": "200", "text": "Yes."}, {"question_id": "201", "text": "no"},
           {"question_id": "202", "text": "Red"}, {"question_id": "203", "text": "yes"}]  # fmt: skip
    assert score("gqa", eval_root, gqa)["metrics"]["score"] == 100.0
    # TextVQA, answers as LLaVA writes them (image id as question_id, told apart by prompt), joined to the
    # annotations by (image id, question): question 1 "STOP" -> "stop" (10/10 -> 1.0), question 0 "go" -> 0,
    # img0001 missing -> "" -> 0.   1/3 = 33.33
    prompts = [
        json.loads(line)["text"] for line in (eval_root / "textvqa/llava_textvqa_val_v051_ocr.jsonl").open()
    ]
    tv = score("textvqa", eval_root, [{"question_id": "img0000", "prompt": prompts[1], "text": "STOP"},
                                      {"question_id": "img0000", "prompt": prompts[0], "text": "go"}])  # fmt: skip
    assert tv["metrics"]["score"] == pytest.approx(33.33) and tv["answer_check"]["missing"] == 1
    assert tv["metrics"]["n_scored"] == 3 and tv["answer_check"]["unknown_ids"] == 0
    # SEED: answers A, B, C; "A" right, "B " wrong (no strip), "C" right -> image 66.67;
    # type 1 (Scene Understanding) = question 0 -> 100, type 2 = questions 1,2 -> 50.
    seed = [
        {"question_id": 101669, "text": "A"},
        {"question_id": 101670, "text": "B "},
        {"question_id": 101671, "text": "C"},
    ]
    m = score("seed", eval_root, seed)["metrics"]
    assert m["score"] == pytest.approx(66.67)
    assert m["per_question_type"] == {"Instance Identity": 50.0, "Scene Understanding": 100.0}
    # SQA: answers 0 (A), 1 (B), 2 (C). "A" right; "The answer is C." wrong; text-only "C. c" right.
    # IMG (4, 7): 1/2 = 50; all: 2/3 = 66.67.
    m = score("sqa", eval_root, [{"question_id": "4", "text": "A"}, {"question_id": "7", "text": "The answer is C."},
                                 {"question_id": "12", "text": "C. c"}])["metrics"]  # fmt: skip
    assert (m["score"], m["accuracy_all"]) == (50.0, pytest.approx(66.67))
    # MME: existence both right (acc 100, acc+ 100 -> 200); code_reasoning "Yes" right, "maybe" -> other, wrong
    # (acc 50, acc+ 0 -> 50). Perception = 200, cognition = 50.
    mme = [{"question_id": "existence/000000000139.jpg#0", "text": "Yes"},
           {"question_id": "existence/000000000139.jpg#1", "text": "No"},
           {"question_id": "code_reasoning/0020.png#0", "text": "Yes"},
           {"question_id": "code_reasoning/0020.png#1", "text": "maybe"}]  # fmt: skip
    m = score("mme", eval_root, mme)["metrics"]
    assert (m["score"], m["cognition"], m["unparsed_answers"]) == (200.0, 50.0, 1)
    # The same answers as LLaVA writes them: the image path as id for both questions, told apart by prompt.
    questions = [json.loads(line) for line in (eval_root / "MME/llava_mme.jsonl").open()]
    llava_style = [
        {"question_id": q["question_id"], "prompt": q["text"], "text": a["text"]}
        for q, a in zip(questions, mme)
    ]
    summary = score("mme", eval_root, llava_style[::-1])  # order does not matter either
    assert (summary["metrics"]["score"], summary["metrics"]["cognition"]) == (200.0, 50.0)
    assert summary["answer_check"]["unknown_ids"] == 0


def test_bad_answer_file_is_counted_not_fatal(eval_root):
    """Duplicate, unknown and missing ids, an unreadable line, empty and too-long predictions: all counted."""
    path = eval_root / "bad_gqa.jsonl"
    path.write_text(
        json.dumps({"question_id": "200", "text": "yes"}) + "\n"
        + json.dumps({"question_id": "200", "text": "no"}) + "\n"  # duplicate: the first one counts
        + '{"question_id": "201", "te\n'  # cut off
        + json.dumps({"question_id": "999", "text": "yes"}) + "\n"  # not a question of the file
        + json.dumps({"question_id": "202", "text": "   "}) + "\n"  # empty
        + json.dumps({"question_id": "203", "text": "it is " + "very " * 20 + "red"}) + "\n"  # too long
    )  # fmt: skip
    summary = main(["gqa", "--model-path", "none", "--ckpt-name", "bad", "--data-root", str(eval_root),
                    "--device", "cpu", "--answers-file", str(path)])  # fmt: skip
    c = summary["answer_check"]
    assert (c["answered"], c["duplicates"], c["unknown_ids"], c["unreadable_lines"]) == (3, 1, 1, 1)
    assert (c["missing"], c["empty"], c["too_long"]) == (1, 1, 1)
    assert c["examples"]["duplicates"] == [f"{path}:2: question_id '200'"]
    # 200 "yes" right; 201 missing, 202 empty: wrong -> 1/3 balanced questions.
    assert summary["metrics"]["score"] == pytest.approx(33.33)


def test_vstar_scoring(eval_root):
    folder = eval_root / "vstar_bench"
    qids = sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.glob("*/*.json"))
    n = {q: len(json.loads((folder / f"{q}.json").read_text())["options"]) for q in qids}
    answers = [
        {
            "question_id": qids[0],
            "text": "-",
            "metadata": {"option_losses": [0.1] + [0.9] * (n[qids[0]] - 1)},
        },  # right
        {
            "question_id": qids[1],
            "text": "-",
            "metadata": {"option_losses": [0.9, 0.1] + [0.9] * (n[qids[1]] - 2)},
        },  # wrong
        {
            "question_id": qids[2],
            "text": json.loads((folder / f"{qids[2]}.json").read_text())["options"][0],
        },  # right, by text
        {
            "question_id": qids[3],
            "text": "",
            "metadata": {"option_losses": [0.1]},
        },  # too few losses: unscorable
    ]  # qids[4], qids[5] unanswered: unscorable.  Right 2 of 6 = 33.33
    m = score("vstar", eval_root, answers)["metrics"]
    assert m["score"] == pytest.approx(33.33) and m["unscorable_answers"] == 3


def test_vstar_s1_scores_options_on_the_unpadded_image(tiny_base, eval_root):
    """SEAL's view of a question it does not search: the image as read through a plain CLIP processor
    (shortest side, centre crop); `--vstar-image-view padded` is recorded and changes the losses."""
    from transformers import CLIPImageProcessor

    from eval.vstar_bench import read_vstar_bench
    from roillava.answer import build_prompt, load_for_inference, option_losses
    from roillava.data import open_image

    summary = run("vstar", tiny_base, eval_root, "--ckpt-name", "view-unpadded")
    assert summary["config"]["vstar_image_view"] == "unpadded"
    rows = {
        r["question_id"]: r for r in map(json.loads, Path(summary["answers_file"]).read_text().splitlines())
    }
    model, processor = load_for_inference(str(tiny_base))
    ip = processor.image_processor
    seal = CLIPImageProcessor(
        size=ip.size,
        crop_size=ip.crop_size,
        image_mean=ip.image_mean,
        image_std=ip.image_std,
        resample=ip.resample,
    )
    questions = read_vstar_bench(eval_root / "vstar_bench").questions
    assert any(
        Image.open(q.image).size[0] != Image.open(q.image).size[1] for q in questions
    )  # padding matters
    for q in questions:
        image = open_image(q.image)
        prompt = build_prompt(
            q.question,
            [image],
            tokenizer=processor.tokenizer,
            model_config=model.config,
            template="vicuna_v1",
        )
        pixels = seal([image], return_tensors="pt")["pixel_values"]
        expected = option_losses(model, processor, prompt, q.options, pixels=pixels)
        meta = rows[q.question_id]["metadata"]
        assert meta["image_view"] == "unpadded" and meta["option_losses"] == pytest.approx(expected, abs=1e-5)
    padded = run("vstar", tiny_base, eval_root, "--ckpt-name", "view-padded", "--vstar-image-view", "padded")
    assert padded["config"]["vstar_image_view"] == "padded"
    padded_rows = {
        r["question_id"]: r for r in map(json.loads, Path(padded["answers_file"]).read_text().splitlines())
    }
    assert all(r["metadata"]["image_view"] == "padded" for r in padded_rows.values())
    assert any(
        padded_rows[q]["metadata"]["option_losses"]
        != pytest.approx(rows[q]["metadata"]["option_losses"], abs=1e-5)
        for q in rows
    )


def test_sqa_cos_mode_records_the_roi_wording(tiny_base, eval_root):
    """ScienceQA in two stages (the option-letter line after the stage-2 quote); the tiny base records no
    ROI wording, so it is asked with Chain-of-Spot's evaluation wording, and the run config says why."""
    summary = run("sqa", tiny_base, eval_root, "--mode", "cos", "--roi-path", str(tiny_base),
                  "--roi-max-new-tokens", "4", "--ckpt-name", "sqa-cos")  # fmt: skip
    assert summary["answer_check"]["answered"] == 3
    assert summary["config"]["roi_wording"] == "what"
    assert "not recorded" in summary["config"]["roi_wording_source"]
