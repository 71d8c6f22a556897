"""The FaST pipeline: the switch decides; System 2 goes global → region → pixel and answers from evidence.

    agent = FastAgent(AgentConfig(base=..., switch=..., roi=..., seg=...))
    trace = agent.answer(image, "What pattern is on the blue object?")
    trace = agent.answer(image, question, options=["plain", "checkered"])   # likelihood multiple choice

For a batch of questions every stage runs as one batch with one adapter active:

1. switch (`SwitchStage.decide_prompts`): one prefill of each prompt followed by SEAL's missing-objects
   sentence tells whether greedy decoding would write that sentence. If not, the switch's own answer
   (greedy text, or the options' likelihoods, from the same cache) is System 1, done. If so, its continuation names the
   objects System 2 must find. "system2_always" continues the sentence for every question, so the switch
   only names the objects. (`switch_decision="generate"` decodes and parses instead, as SEAL's probe.)
2. ROI adapter, Chain-of-Spot stage 1: the region of interest for the question (global → region).
3. seg adapter: each missing object is segmented inside that region (region → pixel); the mask goes
   back to the original image, and its tight box is the object's box.
4. switch with SEAL's evidence prompt: each object's 1.2x context crop and its location (the switch
   applies the 1.2x itself, exactly as in its training data).

Evidence modes: "roi" uses the region as every object's box (no seg), "seg" segments on the whole
image (no ROI), "roi+seg" does both. Every fallback is recorded in the trace:
an unparsable ROI box → the whole image is the region; no object named → one object called
`fallback_object_name` with the region as its box; no mask inside the region → the object is segmented
on the whole image (`seg_retry_whole_image`); still no `[SEG]` or an empty mask → the region is its box;
more objects than `max_objects` → the first ones; an unreadable image → an empty answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from roillava.stage import BaseStage, RoiStage
from swillava.stage import SwitchStage

from .calibration import confidence_applies
from .config import AgentConfig
from .model import ROI, SEG, SWITCH, FastModel
from .trace import ObjectEvidence, Trace, mask_to_rle, tight_box


@dataclass
class Request:
    """One question: its id, text, image (None when the image could not be read) and MC options.

    `instruction`: a protocol instruction that follows the question (ScienceQA's option-letter line);
    the switch reads question + instruction, the ROI adapter quotes the question alone, as
    Chain-of-Spot's ScienceQA evaluation does.
    """

    question_id: str
    question: str
    image: Image.Image | None
    image_path: str | None = None
    options: list[str] | None = None
    error: str | None = None
    instruction: str = ""


@dataclass
class SegOutcome:
    """One object's segmentation: the mask on the original image (None: no `[SEG]`), the seg adapter's
    answer, and why the region's result was replaced by a whole-image one (None: it was not)."""

    mask: np.ndarray | None
    text: str
    retried: str | None = None

    @property
    def found(self) -> bool:
        return self.mask is not None and bool(self.mask.any())


class _Clock:
    """Wall time of each stage of a batch, shared equally by the questions the stage ran for."""

    def __init__(self, traces: list[Trace]):
        self.traces = traces

    def run(self, stage: str, rows: list[int], fn):
        if not rows:
            return fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        share = (time.perf_counter() - start) / len(rows)
        for i in rows:
            lat = self.traces[i].latency
            lat[stage] = lat.get(stage, 0.0) + share
        return out


class FastAgent:
    """FaST on one `FastModel`; `answer_batch` returns one `Trace` per request."""

    def __init__(self, config: AgentConfig, model: FastModel | None = None):
        self.config = config
        self.model = model or FastModel(config)

    # --- public -------------------------------------------------------------------------------------
    def answer(
        self, image: Image.Image, question: str, *, options: list[str] | None = None, question_id: str = "0"
    ) -> Trace:
        return self.answer_batch([Request(question_id, question, image, options=options)])[0]

    def answer_batch(self, requests: Sequence[Request]) -> list[Trace]:
        cfg = self.config
        traces = [
            Trace(
                r.question_id,
                r.question + r.instruction,
                r.image_path,
                cfg.mode,
                cfg.evidence,
                options=r.options,
                error=r.error,
            )
            for r in requests
        ]
        clock = _Clock(traces)
        start = time.perf_counter()
        live = [i for i, r in enumerate(requests) if r.image is not None]
        for i, r in enumerate(requests):
            if r.image is None:
                traces[i].fallback("input", r.error or "no image", "empty answer")
        with self.model.vision.scope():
            if not live:
                pass
            elif cfg.mode == "system1":
                self._system1(requests, traces, live, clock)
            else:
                self._fast(requests, traces, live, clock)
        total = (time.perf_counter() - start) / max(1, len(requests))
        for t in traces:
            t.latency["total"] = sum(v for k, v in t.latency.items() if k != "total") if t.latency else 0.0
            t.latency["batch_share"] = total
        return traces

    # --- System 1 baseline: the base model, adapters off --------------------------------------------
    def _system1(self, requests, traces, live, clock) -> None:
        proc, core = self.model.base_processor, self.model.core
        with self.model.base_only() as model:
            prompts = BaseStage.prompts(
                [self._question(requests[i]) for i in live], [requests[i].image for i in live],
                processor=proc, model_config=core.config, template=self.model.switch_config.template,
            )  # fmt: skip
            free = [i for i in live if requests[i].options is None]
            mc = [i for i in live if requests[i].options is not None]
            by_row = dict(zip(live, prompts))
            if free:
                texts = clock.run(
                    "system1", free,
                    lambda: BaseStage.generate(model, proc, [by_row[i] for i in free], max_new_tokens=self.config.answer_max_new_tokens),
                )  # fmt: skip
                for i, text in zip(free, texts):
                    traces[i].answer = text
            if mc:
                pixels = SwitchStage.view_pixels(
                    proc.image_processor, [requests[i].image for i in mc], self.config.option_image_view
                )
                losses = clock.run(
                    "system1", mc,
                    lambda: SwitchStage.llava_option_losses(
                        model, proc.tokenizer, [by_row[i].input_ids for i in mc], pixels, [requests[i].options for i in mc]
                    ),
                )  # fmt: skip
                for i, row in zip(mc, losses):
                    self._choose(traces[i], row)

    # --- FaST ---------------------------------------------------------------------------------------
    def _suffix(self, question: str) -> str:
        """The configured suffix, unless the question already ends with it (never added twice)."""
        suffix = self.config.question_suffix
        return "" if not suffix.strip() or question.rstrip().endswith(suffix.strip()) else suffix

    def _question(self, r: Request) -> str:
        """What the switch is asked: the question, its protocol instruction, the configured suffix."""
        text = r.question + r.instruction
        return text + self._suffix(text)

    def _roi_question(self, r: Request) -> str:
        """What the ROI adapter quotes in its stage-1 prompt: the question without the instruction."""
        return r.question + self._suffix(r.question)

    def _fast(self, requests, traces, live, clock) -> None:
        cfg, model = self.config, self.model
        switch = model.switch
        model.use(SWITCH)
        system2 = self._decide(requests, traces, live, clock)

        regions = {i: RoiStage.FULL_IMAGE_BOX for i in system2}
        if cfg.uses_roi and system2:
            self._roi(requests, traces, system2, regions, clock)
        names = {i: self._object_names(traces[i]) for i in system2}
        masks: dict[tuple[int, int], SegOutcome] = {}
        if cfg.uses_seg and system2:
            masks = self._seg(requests, names, system2, regions, clock)
        for i in system2:
            self._collect_evidence(requests[i], traces[i], names[i], regions[i], masks, i)

        model.use(SWITCH)
        free = [i for i in system2 if requests[i].options is None]
        if free:
            prompts = [self._evidence_prompt(requests[i], traces[i]) for i in free]
            answers = clock.run(
                "switch_answer", free, lambda: switch.generate(prompts, cfg.answer_max_new_tokens)
            )
            for i, text in zip(free, answers):
                traces[i].answer = text
                if switch.missing_objects(text) is not None:
                    traces[i].fallback(
                        "switch_answer", "still missing objects after evidence", "kept the answer"
                    )
        # Options not scored yet: System-2 rows (with their evidence), and System-1 rows when the
        # decision was decoded rather than made in the shared pass.
        scored = [i for i in live if requests[i].options is not None and traces[i].option_losses is None]
        if scored:
            prompts = [self._evidence_prompt(requests[i], traces[i]) for i in scored]
            stage = (
                "switch_answer" if all(traces[i].system == "system2" for i in scored) else "switch_options"
            )
            losses = clock.run(
                stage,
                scored,
                lambda: switch.option_losses_batch(prompts, [requests[i].options for i in scored]),
            )
            for i, row in zip(scored, losses):
                self._choose(traces[i], row)

    def _evidence_prompt(self, request: Request, trace: Trace):
        """The switch's prompt for the final answer: with SEAL's evidence on System 2, plain otherwise.

        Options scored without evidence see the image in `option_image_view` (SEAL: unpadded).
        """
        switch = self.model.switch
        if trace.system == "system2":
            return switch.build_prompt(request.image, self._question(request), self._objects(trace))
        pixels = None
        if request.options is not None and self.config.option_image_view != "padded":
            view = self.config.option_image_view
            pixels = switch.view_pixels(switch.processor.image_processor, [request.image], view)[0]
        return switch.build_prompt(request.image, self._question(request), pixel_values=pixels)

    def _decide(self, requests, traces, live, clock) -> list[int]:
        """The switch's decision for every question; returns the rows that go to System 2.

        "prefix" (and "system2_always") run `switch_pass`: one prefill of each prompt followed by SEAL's
        missing-objects sentence decides whether greedy decoding would write it, continues it with the
        object names, and answers System-1 rows (greedy text, or option losses) from the same cache.
        "generate" decodes the switch's answer as SEAL's probe does and parses it.
        """
        cfg, switch = self.config, self.model.switch
        prompts = [switch.build_prompt(requests[i].image, self._question(requests[i])) for i in live]
        forced = cfg.mode == "system2_always"
        # Options share the probe's padded prefill only when they are to be scored on that view;
        # otherwise System-1 rows are scored afterwards on their own view (`_evidence_prompt`).
        share_options = cfg.option_image_view == "padded"
        if forced or cfg.switch_decision == "prefix":
            how = "forced" if forced else "prefix"
            result = clock.run(
                "switch",
                live,
                lambda: switch.decide_prompts(
                    prompts, force=forced, max_new_tokens=cfg.switch_max_new_tokens,
                    direct_rows=[k for k, i in enumerate(live) if requests[i].options is None],
                    options={k: requests[i].options for k, i in enumerate(live) if requests[i].options is not None and share_options},
                ),
            )  # fmt: skip
            starts = dict(zip(live, result.starts))
            for k, i in enumerate(live):
                if k in result.continuation:
                    traces[i].switch_text = switch.missing_sentence(result.continuation[k])
                elif k in result.direct:
                    traces[i].switch_text = result.direct[k]
                if k in result.option_losses:
                    self._choose(traces[i], result.option_losses[k])
        else:
            how = "generate"
            texts = clock.run("switch", live, lambda: switch.generate(prompts, cfg.switch_max_new_tokens))
            result = None
            for i, text in zip(live, texts):
                traces[i].switch_text = text
            starts = {i: switch.missing_objects(traces[i].switch_text) is not None for i in live}
        for i in live:
            t = traces[i]
            t.decision, t.forced_system2 = how, forced
            if starts[i]:
                t.system, t.missing_objects = "system2", switch.missing_objects(t.switch_text)
                t.route = "forced" if forced else "missing_objects"
            elif t.option_losses is None:
                t.system, t.answer = "system1", t.switch_text or ""
            else:
                t.system = "system1"
        if not forced:
            confidence = result.direct_confidence if how != "generate" else {}
            self._route_unsure(requests, traces, live, {live[k]: c for k, c in confidence.items()}, clock)
        return [i for i in live if traces[i].system == "system2"]

    def _route_unsure(self, requests, traces, live, direct_confidence: dict[int, float], clock) -> None:
        """Send to System 2 the System-1 rows whose direct reply is garbled or whose confidence is low.

        A free-form reply is checked with `switch_reply_kind`; its confidence is the geometric mean of its
        tokens' probabilities. Options are scored here when the shared pass did not (another image view),
        and their confidence is the margin between the two most likely options. Below
        `confidence_threshold` (0: off) the row goes to System 2, if its number of options is one of
        `confidence_option_counts` (None: any); the switch then names its objects
        exactly as for a forced row, from one pass over those prompts.
        """
        cfg, switch = self.config, self.model.switch
        rows = [i for i in live if traces[i].system == "system1"]
        counts = cfg.confidence_option_counts
        routable = {i for i in rows if confidence_applies(len(requests[i].options or ()), counts)}
        unscored = [
            i
            for i in rows
            if i in routable and requests[i].options is not None and traces[i].option_losses is None
        ]
        if unscored and cfg.confidence_threshold > 0:
            prompts = [self._evidence_prompt(requests[i], traces[i]) for i in unscored]
            losses = clock.run(
                "switch_options",
                unscored,
                lambda: switch.option_losses_batch(prompts, [requests[i].options for i in unscored]),
            )
            for i, row in zip(unscored, losses):
                self._choose(traces[i], row)
        unsure = []
        for i in rows:
            t = traces[i]
            if requests[i].options is None:
                t.switch_reply = switch.reply_kind(t.switch_text or "")
                t.confidence = direct_confidence.get(i)
            if t.switch_reply == "garbled":
                t.route = "garbled_reply"
                t.fallback("switch", f"garbled reply {t.switch_text!r}", "System 2")
            elif i in routable and t.confidence is not None and t.confidence < cfg.confidence_threshold:
                t.route = "low_confidence"
            else:
                continue
            t.system, t.answer, t.option_losses = "system2", "", None
            unsure.append(i)
        if not unsure:
            return
        prompts = [switch.build_prompt(requests[i].image, self._question(requests[i])) for i in unsure]
        named = clock.run(
            "switch",
            unsure,
            lambda: switch.decide_prompts(prompts, force=True, max_new_tokens=cfg.switch_max_new_tokens),
        )
        for k, i in enumerate(unsure):
            traces[i].missing_objects = switch.missing_objects(switch.missing_sentence(named.continuation[k]))

    def _choose(self, trace: Trace, losses: list[float]) -> None:
        trace.option_losses = losses
        if trace.system == "system1":  # the direct answer's confidence, which routing reads
            trace.confidence = SwitchStage.option_confidence(losses)
        trace.answer = trace.options[min(range(len(losses)), key=losses.__getitem__)]

    def _roi(self, requests, traces, rows, regions, clock) -> None:
        """Chain-of-Spot stage 1 on each row; the box grammar (every box the adapter finishes is usable)
        unless the ROI config turns it off."""
        model = self.model
        model.use(ROI)
        questions = [self._roi_question(requests[i]) for i in rows]
        texts, boxes, constrained = clock.run(
            "roi", rows, lambda: model.roi.propose(questions, [requests[i].image for i in rows])
        )
        for i, text, parsed in zip(rows, texts, boxes):
            w, h = requests[i].image.size
            regions[i] = parsed.box
            traces[i].roi = {
                "text": text,
                "box": list(parsed.box),
                "box_pixels": list(RoiStage.pixel_box(w, h, parsed.box)),
                "ok": parsed.ok,
                "reason": parsed.reason,
                "clamped": parsed.clamped,
                "constrained": constrained,
            }
            if not parsed.ok:
                traces[i].fallback("roi", f"unusable ROI box: {parsed.reason}", "whole image as the region")

    def _object_names(self, trace: Trace) -> list[str]:
        """The usable names the switch gave, at most `max_objects` (empty: the fallback object)."""
        names = []
        for name in trace.missing_objects or []:
            try:
                names.append(SwitchStage.check_name(name))
            except ValueError as e:
                trace.fallback("switch", f"unusable object name: {e}", "dropped", name)
        if not names:
            trace.fallback(
                "switch",
                "no objects parsed",
                f"one object {self.config.fallback_object_name!r} on the region",
            )
        elif len(names) > self.config.max_objects:
            trace.fallback(
                "switch", f"{len(names)} objects named", f"kept the first {self.config.max_objects}"
            )
            names = names[: self.config.max_objects]
        return names

    def _seg(self, requests, names, rows, regions, clock) -> dict[tuple[int, int], SegOutcome]:
        """A mask on the original image for each (question, object), segmented inside the question's region.

        An object the region yields nothing for (no `[SEG]`, empty mask) is segmented again on the whole
        image when `seg_retry_whole_image` is on and the region was not the whole image already.
        """
        jobs = [(i, j, name) for i in rows for j, name in enumerate(names[i])]
        outcomes = {
            key: SegOutcome(mask, text)
            for key, (mask, text) in self._segment(requests, jobs, regions, clock).items()
        }
        retry = [
            (i, j, name)
            for i, j, name in jobs
            if not outcomes[(i, j)].found and tuple(regions[i]) != RoiStage.FULL_IMAGE_BOX
        ]
        if retry and self.config.seg_retry_whole_image:
            whole = dict.fromkeys((i for i, _, _ in retry), RoiStage.FULL_IMAGE_BOX)
            for key, (mask, text) in self._segment(requests, retry, whole, clock).items():
                before = outcomes[key]
                why = (
                    "no [SEG] token generated in the region"
                    if before.mask is None
                    else "empty mask in the region"
                )
                outcomes[key] = SegOutcome(mask, text, why)
        return outcomes

    def _segment(
        self, requests, jobs, regions, clock
    ) -> dict[tuple[int, int], tuple[np.ndarray | None, str]]:
        """Seg adapter on each question's region crop (SAM encodes each crop once), masks pasted back."""
        if not jobs:
            return {}
        model = self.model
        model.use(SEG)
        rows = list(dict.fromkeys(i for i, _, _ in jobs))
        index = {i: k for k, i in enumerate(rows)}
        region_images = [RoiStage.crop(requests[i].image, regions[i]) for i in rows]
        results = clock.run(
            "seg",
            rows,
            lambda: model.seg_stage.segment(region_images, [(index[i], n) for i, _, n in jobs], self.config),
        )
        out = {}
        for (i, j, _), (region_mask, text) in zip(jobs, results):
            w, h = requests[i].image.size
            out[(i, j)] = (
                None if region_mask is None else RoiStage.paste_mask(region_mask, w, h, regions[i]),
                text,
            )
        return out

    def _collect_evidence(self, request: Request, trace: Trace, names, region, masks, row: int) -> None:
        image = request.image
        width, height = image.size
        region_box = RoiStage.pixel_box(width, height, region)
        region_source = "roi" if trace.roi is not None and trace.roi["ok"] else "image"
        names = names or [self.config.fallback_object_name]
        for j, name in enumerate(names):
            box, source, rle, area, seg_text = region_box, region_source, None, None, None
            if (row, j) in masks:
                outcome = masks[(row, j)]
                mask, seg_text = outcome.mask, outcome.text
                if outcome.retried:
                    trace.fallback("seg", outcome.retried, "segmented the whole image", name)
                if mask is None:
                    trace.fallback("seg", "no [SEG] token generated", f"{region_source} box", name)
                elif not mask.any():
                    trace.fallback("seg", "empty mask", f"{region_source} box", name)
                else:
                    rle, area = mask_to_rle(mask), int(mask.sum())
                    box, source = tight_box(mask), "seg"
            # Always inside the image by construction; the switch's 1.2x patch around it.
            box, patch = SwitchStage.object_box(box, width, height, self.model.switch_config.patch_scale)
            trace.objects.append(ObjectEvidence(name, box, source, patch, seg_text, rle, area))
        trace.evidence_prompt = SwitchStage.evidence_prompt_text(
            self._question(request), self._objects(trace), width, height
        )

    @staticmethod
    def _objects(trace: Trace) -> list[tuple[str, list[float]]]:
        return [(o.name, o.box) for o in trace.objects]
