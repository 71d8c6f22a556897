"""`python -m fast.web`: the agent in a browser page, its chain of evidence laid out.

    python -m fast.web                      # the demo's toy checkpoints (`make demo` writes them)
    python -m fast.web --base B --switch SW --roi ROI --seg SEG [--port 7860] [any `python -m fast` option]

Upload an image (or pick a toy example), ask a question, and the page shows which system answered and
why (the objects the switch said were missing), the region of interest (yellow box) and the masks on
the image, the evidence prompt the switch answered from, the answer, and the seconds of each stage.
Requests queue for one worker: the agent switches adapters on one model and is not thread-safe.

The page is served on 127.0.0.1 (unless --host says otherwise), with no share link, no analytics or version check and no web
fonts, so it works offline and loads nothing from outside the machine. Gradio is imported only here,
so the rest of the project does not need it.
"""

from __future__ import annotations

import argparse
import atexit
import html
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .agent import FastAgent
from .cli import build_parser as build_cli_parser
from .cli import config_from_args
from .config import AgentConfig
from .trace import Trace, draw_overlay


def demo_checkpoints() -> Path:
    """The demo's checkpoint folder: `DEMO_CHECKPOINTS` when set (a test does), else the playground's
    (imported only when asked: the page does not need the playground to serve given checkpoints)."""
    if "DEMO_CHECKPOINTS" in globals():
        return globals()["DEMO_CHECKPOINTS"]
    from playground.demo import CKPT

    return CKPT


def __getattr__(name: str):
    if name == "DEMO_CHECKPOINTS":
        return demo_checkpoints()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `python -m fast` options that choose what to answer: the page asks the questions instead.
BATCH_ONLY = ("image", "question", "question_file", "vstar", "bench_folder", "answers_file", "options")
NOT_FOR_THE_PAGE = (
    "image_folder",
    "traces_file",
    "overlay_dir",
    "batch_size",
    "num_chunks",
    "chunk_idx",
    "model_id",
)
# Elements the browser test and users' scripts find the results by.
IDS = {
    "image": "fast-image",
    "question": "fast-question",
    "ask": "fast-ask",
    "status": "fast-status",
    "answer": "fast-answer",
    "decision": "fast-decision",
    "overlay": "fast-overlay",
    "evidence": "fast-evidence",
    "timing": "fast-timing",
    "trace": "fast-trace",
}
ERROR_MARK = "Could not answer"


@dataclass
class WebOptions:
    host: str
    port: int | None
    examples: bool


def build_parser() -> argparse.ArgumentParser:
    """`python -m fast`'s parser (every model option) plus the page's; checkpoints default to the demo's."""
    p = build_cli_parser()
    p.prog = "python -m fast.web"
    p.description = __doc__
    for action in p._actions:
        if action.dest in ("base", "switch", "roi", "seg"):
            action.required = False
            action.default = None
            where = demo_checkpoints() / ("system1" if action.dest == "base" else action.dest)
            action.help = f"{action.help or 'adapter'} (default: the demo's, {where})"
        elif action.dest in BATCH_ONLY + NOT_FOR_THE_PAGE:
            action.help = argparse.SUPPRESS
    web = p.add_argument_group("page")
    web.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    web.add_argument("--port", type=int, default=None, help="default: the first free port from 7860")
    web.add_argument(
        "--no-examples", action="store_true", help="do not offer the generated toy-world examples"
    )
    return p


def parse_args(argv: list[str] | None = None) -> tuple[AgentConfig, WebOptions]:
    """The agent's config and the page's options; the demo's checkpoints and knobs when no --base is given."""
    p = build_parser()
    args = p.parse_args(argv)
    given = [name for name in BATCH_ONLY if getattr(args, name, None) not in (None, False)]
    if given:
        p.error(
            "the page asks its own questions; drop " + ", ".join("--" + g.replace("_", "-") for g in given)
        )
    if args.base is None:
        if not (demo_checkpoints() / "seg").is_dir():
            p.error(
                f"no checkpoints given and the demo's are missing ({demo_checkpoints()}): run `make demo` "
                "first, or pass --base/--switch/--roi/--seg"
            )
        p.set_defaults(**demo_defaults())
        args = p.parse_args(argv)
    elif args.switch is None:
        p.error("--switch is required with --base")
    return config_from_args(args), WebOptions(args.host, args.port, not args.no_examples)


def demo_defaults() -> dict:
    """The demo's checkpoints, and its questions asked as the toy adapters were trained."""
    from playground.demo import AGENT_KNOBS
    from playground.toyworld import SHORT_ANSWER_SUFFIX

    return {
        "base": str(demo_checkpoints() / "system1"),
        "switch": str(demo_checkpoints() / "switch"),
        "roi": str(demo_checkpoints() / "roi"),
        "seg": str(demo_checkpoints() / "seg"),
        "switch_max_new_tokens": AGENT_KNOBS["switch_max_new_tokens"],
        "roi_max_new_tokens": AGENT_KNOBS["roi_max_new_tokens"],
        "answer_max_new_tokens": AGENT_KNOBS["answer_max_new_tokens"],
        "question_suffix": SHORT_ANSWER_SUFFIX,
    }


# --- what the page shows (plain functions: the page and its tests share them) -------------------------
def decision_markdown(trace: Trace) -> str:
    """Which system answered, and why."""
    if trace.error:
        return f"**No answer**: {trace.error}"
    if trace.mode == "system1":
        return "**System 1** (baseline: the base model answered with every adapter off)."
    lines = []
    if trace.system == "system2":
        names = ", ".join(f"**{n}**" for n in trace.missing_objects or []) or "(no object named)"
        if trace.forced_system2:
            lines.append(f"**System 2**, forced (`--mode system2-always`). The switch named: {names}.")
        else:
            lines.append(f"**System 2**: the switch said visual information is missing about {names}.")
    else:
        lines.append("**System 1**: the switch answered directly (it named no missing object).")
    confidence = getattr(trace, "confidence", None)
    if confidence is not None:
        lines.append(f"Switch confidence: {confidence}.")
    if trace.roi is not None:
        box = [round(v, 3) for v in trace.roi["box"]]
        note = "" if trace.roi.get("ok", True) else f" ({trace.roi.get('reason')})"
        lines.append(f"Region of interest: `{trace.roi['text']}` → box {box} (yellow){note}.")
    for o in trace.objects:
        area = f", mask of {o.mask_area} px" if o.mask_area is not None else ", no mask"
        box = ", ".join(f"{v:.0f}" for v in o.box)
        lines.append(f"Object **{o.name}**: box ({box}) from {o.source}{area} (green).")
    for f in trace.fallbacks:
        who = f" [{f.object}]" if f.object else ""
        lines.append(f"Fallback at {f.stage}{who}: {f.reason} → {f.action}.")
    return "\n\n".join(lines)


def timing_markdown(trace: Trace) -> str:
    """Seconds per stage, as a table."""
    rows = [
        f"| {stage} | {seconds:.3f} |" for stage, seconds in trace.latency.items() if stage != "batch_share"
    ]
    return "| stage | seconds |\n|---|---|\n" + "\n".join(rows)


def overlay_image(image: Image.Image, trace: Trace) -> Image.Image:
    """The ROI box and masks on the image (System 2); the image itself for a System-1 answer."""
    return draw_overlay(image, trace) if trace.system == "system2" else image.convert("RGB")


def message(text: str) -> str:
    return f"**{ERROR_MARK}**: {html.escape(text)}"


def read_upload(payload) -> tuple[Image.Image | None, str | None]:
    """The uploaded image (RGB), or a message saying why it cannot be used."""
    from eval.runner import open_image

    if payload is None:
        return None, "upload an image or pick an example first."
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", payload)
    name = (payload.get("orig_name") if isinstance(payload, dict) else None) or Path(str(path)).name
    try:
        image = open_image(Path(path))
    except (OSError, Image.DecompressionBombError, ValueError) as e:
        reason = str(e).replace(f"unreadable image {path}: ", "").replace(str(path), name)
        return None, f"{name} is not a readable image ({reason})."
    if min(image.size) < 2:
        return None, f"{name} is {image.size[0]}x{image.size[1]} pixels: too small to look at."
    return image, None


class Page:
    """The page's one handler around a loaded agent; never raises (a failure becomes a message)."""

    def __init__(self, agent: FastAgent):
        self.agent = agent

    def ask(self, payload, question: str | None):
        """(status, answer, decision, overlay, evidence prompt, timing, trace) for one question."""
        blank = ("", "", None, "", "", None)
        question = (question or "").strip()
        if not question:
            return (message("type a question."), *blank)
        image, problem = read_upload(payload)
        if problem:
            return (message(problem), *blank)
        start = time.perf_counter()
        try:
            trace = self.agent.answer(image, question)
        except Exception as e:  # shown as a message; the server's log keeps the traceback
            traceback.print_exc()
            return (message(f"the agent failed: {type(e).__name__}: {e}"), *blank)
        seconds = time.perf_counter() - start
        print(
            f"[fast.web] {trace.system} in {seconds:.2f} s: {question!r} -> {trace.answer!r}", file=sys.stderr
        )
        status = (
            f"Answered by **{'System 2' if trace.system == 'system2' else 'System 1'}** in {seconds:.2f} s."
        )
        return (
            status,
            trace.answer,
            decision_markdown(trace),
            overlay_image(image, trace),
            trace.evidence_prompt or "(System 1: no evidence prompt)",
            timing_markdown(trace),
            trace.to_dict(),
        )


# --- toy examples -------------------------------------------------------------------------------------
def write_toy_examples(folder: Path) -> list[list[str]]:
    """A few toy-world scenes (the world's own generator, fixed seeds): [image path, question] rows.

    Pattern questions about small targets are the hard ones (System 2); the rest are easy.
    """
    from playground.toyworld.scene import make_scene
    from playground.toyworld.world import color_question, pattern_question

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (size, ask) in enumerate(
        (
            ("small", pattern_question),
            ("small", pattern_question),
            ("large", pattern_question),
            ("large", color_question),
        )
    ):
        scene = make_scene(random.Random(f"fast-web-{k}"), size=size)
        path = folder / f"toy_{k}_{size}.png"
        scene.image.save(path)
        rows.append([str(path), ask(scene.target).text])
    return rows


# --- the Gradio app -----------------------------------------------------------------------------------
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
CSS = "#fast-overlay img { object-fit: contain; } footer { display: none !important; }"


def import_gradio():
    """Gradio, with its network features off (set before the import, which reads them)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("the page needs Gradio: pip install -r requirements.txt (it pins gradio)") from None
    return gr


def build_app(page: Page, examples: list[list[str]]):
    """The Blocks app: inputs on the left, the chain of evidence on the right."""
    gr = import_gradio()
    config = page.agent.config
    with gr.Blocks(title="FaST: fast and slow visual agent", analytics_enabled=False) as app:
        gr.Markdown(
            "# FaST: a visual agent that thinks fast and slow\n"
            "System 1 answers at once. When the switch says visual information is missing, System 2 "
            "proposes a region of interest (yellow), segments the missing objects with SAM (tinted "
            "masks, green boxes, white context crops) and answers again from that evidence. "
            f"Mode `{config.mode}`, evidence `{config.evidence}`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image", type="filepath", sources=["upload", "clipboard"], elem_id=IDS["image"]
                )
                question = gr.Textbox(
                    label="Question",
                    placeholder="What pattern is on the blue object?",
                    elem_id=IDS["question"],
                )
                ask = gr.Button("Ask", variant="primary", elem_id=IDS["ask"])
                if examples:
                    gr.Examples(examples, inputs=[image, question], label="Toy examples")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id=IDS["status"])
                answer = gr.Textbox(label="Answer", interactive=False, elem_id=IDS["answer"])
                decision = gr.Markdown(elem_id=IDS["decision"])
                overlay = gr.Image(
                    label="Evidence: region of interest and masks", type="pil", interactive=False,
                    elem_id=IDS["overlay"], format="png",
                )  # fmt: skip
                evidence = gr.Textbox(
                    label="Evidence prompt (what the switch answered from)", interactive=False, lines=3,
                    elem_id=IDS["evidence"],
                )  # fmt: skip
                timing = gr.Markdown(elem_id=IDS["timing"])
                with gr.Accordion("Full trace (JSON)", open=False):
                    trace = gr.JSON(elem_id=IDS["trace"])
        outputs = [status, answer, decision, overlay, evidence, timing, trace]
        # preprocess=False: the handler opens the upload itself, so a bad file becomes a message
        for event in (ask.click, question.submit):
            event(page.ask, inputs=[image, question], outputs=outputs, preprocess=False, concurrency_limit=1)
    app.queue(default_concurrency_limit=1, max_size=16)
    return app


def launch(app, options: WebOptions, allowed_paths: list[str]) -> None:
    gr = import_gradio()
    theme = gr.themes.Default(
        font=[gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")],
        font_mono=[gr.themes.Font("monospace")],
    )
    app.launch(
        server_name=options.host,
        server_port=options.port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        enable_monitoring=False,
        allowed_paths=allowed_paths,
        theme=theme,
        css=CSS,
        show_error=False,
        quiet=True,
        prevent_thread_lock=True,
    )


def main(argv: list[str] | None = None) -> None:
    config, options = parse_args(argv)
    import_gradio()  # fail before loading models when Gradio is missing
    print("[fast.web] " + config.to_json().replace("\n", " "), file=sys.stderr)
    agent = FastAgent(config)
    print("[fast.web] " + agent.model.memory.summary(), file=sys.stderr)
    examples_dir = Path(tempfile.mkdtemp(prefix="fast-web-examples-"))
    atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stopped server still removes its examples
    examples = write_toy_examples(examples_dir) if options.examples else []
    app = build_app(Page(agent), examples)
    launch(app, options, [str(examples_dir)])
    print(f"[fast.web] serving {app.local_url}", file=sys.stderr, flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
