"""From ``results.json``: the goals of issue 7 with pass/fail and numbers, the Markdown report, the README
results section (with the command that produced it) and four PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path

PROJECT_TAGGER = ("onnx-fp32", "onnx-int8")  # the project's own in-process backends, judged by the goals
PROJECT_PRICE = ("onnx-fp32", "onnx-int8")
PLOTS = {"latency": "latency_per_backend.png", "speedup": "speedup_over_eager.png",
         "concurrency": "throughput_vs_concurrency.png", "batch": "latency_vs_batch.png"}


def _best(stats: dict, names, key="p50_ms", low=True):
    have = [n for n in names if n in stats]
    if not have:
        return None, None
    name = (min if low else max)(have, key=lambda n: stats[n][key])
    return name, stats[name]


def _goal(gid, model, goal, passed, value, detail) -> dict:
    return {"id": gid, "model": model, "goal": goal, "passed": passed, "value": value, "detail": detail}


def evaluate_goals(results: dict) -> list[dict]:
    """Each goal per model whose results hold its workload; ``passed`` None when a backend it needs was not
    timed."""
    goals = []
    for key, m in results["models"].items():
        if "W1" in m["results"]:
            w1, w2 = m["results"]["W1"], m["results"]["W2"]
            s1, s2 = w1["backends"], w2["backends"]
            name, best = _best(s1, PROJECT_TAGGER)
            eager = w1["eager_reference"]
            speed = s1[eager]["p50_ms"] / best["p50_ms"]
            goals.append(_goal("W1-3x-eager", key, "W1 at least 3x eager PyTorch (p50, batch 1)", speed >= 3, speed,
                               f"{name} p50 {best['p50_ms']:.2f} ms vs {eager} {s1[eager]['p50_ms']:.2f} ms: "
                               f"{speed:.2f}x"))
            for wid, stats, label, key_, low in (("W1", s1, "p50 latency", "p50_ms", True),
                                                 ("W2", s2, "throughput", "throughput_items_s", False)):
                name, best = _best(stats, PROJECT_TAGGER, key_, low)
                peer = stats.get("ctranslate2-int8")
                text = f"{wid} at least CTranslate2 int8 ({label})"
                if peer is None:
                    goals.append(_goal(f"{wid}-ctranslate2", key, text, None, None, "not evaluated: ctranslate2-int8 "
                                       f"was not timed ({m['backends']['ctranslate2-int8'].get('reason', '')})"))
                    continue
                ratio = peer[key_] / best[key_] if low else best[key_] / peer[key_]
                unit = "ms" if low else "items/s"
                goals.append(_goal(f"{wid}-ctranslate2", key, text, ratio >= 1, ratio,
                                   f"{name} {best[key_]:.2f} {unit} vs ctranslate2-int8 {peer[key_]:.2f} {unit}: "
                                   f"{ratio:.2f}x of the peer"))
        goals += _constrained_goals(key, m)
        if "W3" in m["results"]:
            s3 = m["results"]["W3"]["backends"]
            name, best = _best(s3, PROJECT_PRICE)
            speed = s3["eager"]["p50_ms"] / best["p50_ms"]
            fp32 = s3["eager"]["p50_ms"] / s3["onnx-fp32"]["p50_ms"] if "onnx-fp32" in s3 else None
            goals.append(_goal("W3-2x-eager", key, "W3 ONNX Runtime at least 2x eager (p50, batch 32)", speed >= 2,
                               speed, f"{name} p50 {best['p50_ms']:.1f} ms vs eager {s3['eager']['p50_ms']:.1f} ms: "
                               f"{speed:.2f}x" + (f" (onnx-fp32 alone {fp32:.2f}x)" if fp32 else "")))
    serving = results.get("serving", {})
    if serving.get("status") == "timed":
        lat = serving["latency"]
        over = lat["triton-grpc"]["p50_ms"] / lat["in-process"]["p50_ms"] - 1
        goals.append(_goal("W4-overhead", "tagger-trained", "W4 served at most 20% over in-process (p50, batch 1)",
                           over <= 0.20, over, f"triton-grpc {lat['triton-grpc']['p50_ms']:.2f} ms vs in-process "
                           f"{lat['in-process']['p50_ms']:.2f} ms: {over:+.0%}"))
        tp = serving["throughput"]
        scale = tp["16"]["throughput_items_s"] / tp["1"]["throughput_items_s"]
        goals.append(_goal("W4-scaling", "tagger-trained", "W4 throughput at concurrency 16 at least 3x concurrency 1",
                           scale >= 3, scale, f"{tp['16']['throughput_items_s']:.1f} vs {tp['1']['throughput_items_s']:.1f} "
                           f"requests/s: {scale:.2f}x"))
    else:
        for gid, text in (("W4-overhead", "W4 served at most 20% over in-process"),
                          ("W4-scaling", "W4 throughput at concurrency 16 at least 3x concurrency 1")):
            goals.append(_goal(gid, "tagger-trained", text, None, None,
                               f"not evaluated: {serving.get('reason', 'W4 did not run')}"))
    return goals


# ---------------------------------------------------------------------------------------------
# Markdown


def _constrained_goals(key: str, m: dict) -> list[dict]:
    """The constrained decode's goals: the constraint's share of the decode at batch 32, and the constrained
    end-to-end batch-1 latency against CTranslate2 int8's unconstrained W1."""
    c = m.get("constrained")
    if not c or "overhead" not in c:
        return []
    goals = []
    name, o = _best(c["overhead"]["32"], PROJECT_TAGGER, "constraint_share")
    goals.append(_goal("constraint-share", key, "constraint at most 15% of the constrained decode (batch 32)",
                       o["constraint_share"] <= 0.15, o["constraint_share"],
                       f"{name}: {o['constraint_ms']:.2f} of {o['decode_ms']:.2f} ms "
                       f"({o['constraint_share']:.0%}; {o['constraint_us_per_call']:.0f} us per decoder call)"))
    peer = m["results"].get("W1", {}).get("backends", {}).get("ctranslate2-int8")
    name, best = _best(c["by_batch"]["1"], PROJECT_TAGGER)
    text = "constrained end-to-end batch 1 at most CTranslate2 int8 unconstrained (W1 p50)"
    if peer is None:
        goals.append(_goal("constrained-b1-ctranslate2", key, text, None, None, "not evaluated: no ctranslate2-int8"))
    else:
        ratio = peer["p50_ms"] / best["p50_ms"]
        goals.append(_goal("constrained-b1-ctranslate2", key, text, ratio >= 1, ratio,
                           f"{name} constrained {best['p50_ms']:.2f} ms vs ctranslate2-int8 {peer['p50_ms']:.2f} ms: "
                           f"{ratio:.2f}x of the peer"))
    return goals


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(x, digits=2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _mark(passed) -> str:
    return {True: "**pass**", False: "**fail**", None: "not evaluated"}[passed]


def results_tables(results: dict) -> list[str]:
    lines = []
    for key, m in results["models"].items():
        lines += [f"#### {key}: {m['description']} ({m['parameters'] / 1e6:.2f} M parameters)", ""]
        lines += [_row(["workload", "backend", "p50 ms", "p90 ms", "p99 ms", "mean ms", "items/s", "× eager",
                        "GFLOP/s", "agreement"]), _row(["---"] * 10)]
        for wid, w in m["results"].items():
            agree = m["agreement"].get(wid, {}).get("backends", {})
            for name, s in w["backends"].items():
                a = agree.get(name, {})
                if "token_agreement" in a:
                    a_text = "identical" if a["identical"] else f"{a['token_agreement']:.0%} tokens"
                elif "max_rel_diff" in a:
                    a_text = f"rel {a['max_rel_diff']:.1e}"
                else:
                    a_text = ""
                lines.append(_row([f"{wid} (b{w['batch']})", name, _fmt(s["p50_ms"]), _fmt(s["p90_ms"]),
                                   _fmt(s["p99_ms"]), _fmt(s["mean_ms"]), _fmt(s["throughput_items_s"], 1),
                                   _fmt(s.get("speedup_vs_eager")), _fmt(s.get("gflops_per_s"), 1), a_text]))
        g = m["gflops"]
        lines += ["", "GFLOPs per request (FLOP counter on the eager model): " + ", ".join(
            f"{wid} {v['per_request']:.3f}" for wid, v in g.items()), ""]
        if "constrained" in m:
            c = m["constrained"]
            lines += ["Constrained end-to-end tagger (taxonomy trie, the checkpoint's test texts; label agreement "
                      "with eager: " + ", ".join(f"{n} {a['label_agreement']:.0%}" for n, a in c["agreement"].items())
                      + "):", "", _row(["batch", "backend", "p50 ms", "p90 ms", "items/s", "× eager"]),
                      _row(["---"] * 6)]
            for batch, stats in c["by_batch"].items():
                for name, s in stats.items():
                    lines.append(_row([batch, name, _fmt(s["p50_ms"]), _fmt(s["p90_ms"]),
                                       _fmt(s["throughput_items_s"], 1), _fmt(s["speedup_vs_eager"])]))
            lines.append("")
            lines += overhead_lines(c.get("overhead", {}))
    return lines


def overhead_lines(overhead: dict) -> list[str]:
    """Where the constrained decode's time goes, per batch size and backend (32 of the checkpoint's texts)."""
    if not overhead:
        return []
    lines = ["Where the constrained decode's time goes (32 texts, ms per batch; the constraint: everything but the "
             "tokenizer, the encoder, the decoder calls and the label prior's classifiers):", "",
             _row(["batch", "backend", "decode", "tokenizer", "encoder", "decoder calls", "prior", "constraint",
                   "share", "us per call", "decoder step us", "calls per batch (jump-forward / one per token)",
                   "tokens per label"]),
             _row(["---"] * 13)]
    for batch, by_backend in overhead.items():
        for name, o in by_backend.items():
            lines.append(_row([batch, name, _fmt(o["decode_ms"]), _fmt(o.get("tokenizer_ms")), _fmt(o["encoder_ms"]),
                               _fmt(o["decoder_ms"]),
                               _fmt(o.get("prior_ms")), _fmt(o["constraint_ms"]), f"{o['constraint_share']:.0%}",
                               _fmt(o["constraint_us_per_call"], 0), _fmt(o["step_us"], 0),
                               f"{o['calls_per_batch']:.1f} / {o['calls_per_batch_one_per_token']:.1f}",
                               _fmt(o["tokens_per_label"], 1)]))
    return lines + [""]


def serving_lines(serving: dict) -> list[str]:
    if serving.get("status") != "timed":
        return [f"W4 skipped: {serving.get('reason')}", ""]
    lines = [f"Server: {serving['server']} ({serving['url']}); agreement of served and in-process labels on "
             f"{serving['agreement']['rows']} texts: {serving['agreement']['label_agreement']:.0%}.", "",
             _row(["path (batch 1)", "p50 ms", "p90 ms", "p99 ms", "mean ms"]), _row(["---"] * 5)]
    for name, s in serving["latency"].items():
        lines.append(_row([name, _fmt(s["p50_ms"]), _fmt(s["p90_ms"]), _fmt(s["p99_ms"]), _fmt(s["mean_ms"])]))
    lines += ["", _row(["concurrency", "shelfml client req/s", "perf_analyzer req/s", "perf_analyzer p50 ms"]),
              _row(["---"] * 4)]
    pa = serving.get("perf_analyzer", {})
    for c, t in serving["throughput"].items():
        level = pa.get("levels", {}).get(c, {})
        lines.append(_row([c, _fmt(t["throughput_items_s"], 1), _fmt(level.get("throughput_items_s"), 1),
                           _fmt(level.get("p50_ms"))]))
    if pa and pa.get("status") != "measured":
        lines += ["", f"perf_analyzer: {pa.get('status')}: {pa.get('reason', '')}"]
    elif pa:
        lines += ["", f"perf_analyzer {pa['version']} (`{pa['command']}`), input data `{pa['input_data']}`."]
    lines.append("")
    return lines


def retrieval_lines(w6: dict | None) -> list[str]:
    """W6: index build, memory, batch-1 query latency and throughput, beside the seed's 70 ms per query."""
    if not w6:
        return []
    lines = [f"W6 retrieval: {w6['rows']:,} synthetic {w6['dimension']}-d vectors, top-{w6['k']}, "
             f"{w6['threads']} thread(s), faiss {w6['faiss']}; the seed retrieved at {w6['seed_reference_ms']} ms "
             "per query.", "",
             _row(["index", "build s", "MiB", "batch-1 p50 ms", "p95 ms", f"batch-{w6['batch']} queries/s",
                   "recall@k vs exact"]), _row(["---"] * 7)]
    for kind, r in w6["kinds"].items():
        lines.append(_row([kind, _fmt(r["build_s"]), _fmt(r["index_bytes"] / 2**20, 1), _fmt(r["latency_ms"]["p50"], 3),
                           _fmt(r["latency_ms"]["p95"], 3), _fmt(r["batch_queries_per_s"], 0),
                           _fmt(r["recall_at_k"], 3)]))
    encoder = w6.get("encoder_batch1_ms")
    if encoder:
        lines += ["", f"MiniLM query embedding (the other half of a query), batch 1: {json.dumps(encoder)}"]
    return lines + [""]


def profile_lines(results: dict) -> list[str]:
    lines = ["Where the time goes in W1 (median encoder call and decoder step, backends built on a step function):",
             "", _row(["model", "backend", "encoder ms", "decoder step ms", "16 steps ms"]), _row(["---"] * 5)]
    for key, m in results["models"].items():
        for name, p in m.get("profile", {}).get("W1", {}).items():
            lines.append(_row([key, name, _fmt(p["encoder_ms"]), _fmt(p["decoder_step_ms"], 3),
                               _fmt(p["decoder_total_ms"])]))
    serving = results.get("serving", {})
    if serving.get("status") == "timed":
        lines += ["", "Server side during W4 (Triton statistics, ms per inference):", "",
                  _row(["phase", "model", "inferences", "executions", "avg batch", "queue", "compute infer",
                        "success (total)"]), _row(["---"] * 8)]
        for phase, models in serving["server_profile"].items():
            for model, s in models.items():
                lines.append(_row([phase, model, s["inferences"], s["executions"], _fmt(s["average_batch"]),
                                   _fmt(s["queue_ms_per_inference"], 3), _fmt(s["compute_infer_ms_per_inference"], 3),
                                   _fmt(s["success_ms_per_inference"], 3)]))
    return lines + [""]


def readme_section(results: dict) -> str:
    """The README's results section, generated from the JSON, with the command that produced it."""
    env = results["environment"]
    lines = ["### Benchmarks (`shelfml bench`)", "",
             f"Generated from `results.json` by `{results['command']}` ({'quick' if results['quick'] else 'full'} "
             f"run, {results['started']}, {results['elapsed_s']:.0f} s) on {env['cpu']}, {env['threads']} threads, "
             f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, ctranslate2 "
             f"{env['versions']['ctranslate2']}.", "", _row(["goal", "model", "result", "numbers"]),
             _row(["---"] * 4)]
    for g in results["goals"]:
        lines.append(_row([g["goal"], g["model"], _mark(g["passed"]), g["detail"]]))
    lines += [""] + results_tables(results) + serving_lines(results.get("serving", {}))
    lines += retrieval_lines(results.get("retrieval"))
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# shelfml bench", "", f"Command: `{results['command']}`", "",
             "## Environment", "", "```json", json.dumps(env, indent=1), "```", "",
             "## Workloads", ""]
    for w in results["workloads"].values():
        lines.append(f"- **{w['id']} {w['name']}**: {w['description']}")
    lines += ["", f"Repetitions (after warm-up, backends interleaved): `{json.dumps(results['repetitions'])}`. "
              "Every backend's outputs were compared with the eager reference before timing.", "",
              "## Goals", "", _row(["goal", "model", "result", "numbers"]), _row(["---"] * 4)]
    for g in results["goals"]:
        lines.append(_row([g["goal"], g["model"], _mark(g["passed"]), g["detail"]]))
    failed = [g for g in results["goals"] if g["passed"] is False]
    if failed:
        lines += ["", "Goals not met are reported as measured (the workloads are fixed); the profile below shows "
                  "where the time goes."]
    lines += ["", "## Seed figures beside ours", "", _row(["figure", "seed", "ours", "what each measured"]),
              _row(["---"] * 4)]
    small = next((m for k, m in results["models"].items() if k.startswith("tagger-flan-t5-small")), None)
    for f in results["seed_figures"]:
        if small is None:
            ours, what = "–", "no flan-t5-small-shape model in this run"
        elif f["unit"] == "s":
            w1 = small["results"]["W1"]
            eager = w1["backends"][w1["eager_reference"]]
            best = min(w1["backends"].items(), key=lambda kv: kv[1]["p50_ms"])
            ours = f"{eager['p50_ms'] / 1e3:.3f} s eager ({w1['eager_reference']}); {best[1]['p50_ms'] / 1e3:.3f} s {best[0]}"
            what = "ours: W1 p50 on random flan-t5-small-shape weights, 64 tokens in, 16 out, batch 1, this CPU"
        else:
            g = small["gflops"]["W1"]
            ours = f"{g['per_request']:.2f} GFLOPs (encoder {g['encoder']:.2f} + decoder {g['decoder']:.2f})"
            what = ("ours: torch FLOP counter (2 per multiply-add, matmuls and attention) on W1: encoder once on 64 "
                    "tokens + 16 cached decoder steps incl. the 32,128-way LM head")
        lines.append(_row([f["figure"], f"{f['value']} {f['unit']}", ours, f"seed: {f['what_it_measured']}; {what}"]))
    lines += ["", "## Results", ""] + results_tables(results) + ["## W4: serving", ""] + serving_lines(
        results.get("serving", {})) + ["## W6: retrieval", ""] + retrieval_lines(results.get("retrieval")) + [
        "## Profile", ""] + profile_lines(results)
    lines += ["## Skipped backends", "", _row(["model", "backend", "reason"]), _row(["---"] * 3)]
    lines += [_row([s["model"], s["backend"], s["reason"]]) for s in results["skipped"]]
    lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in PLOTS.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots


def _bar_plots(plt, results: dict, out: Path, files: dict) -> None:
    """Latency and speed-up bars: one panel per (model, workload)."""
    panels = [(k, wid, m["results"][wid]) for k, m in results["models"].items() for wid in ("W1", "W2", "W3")
              if wid in m["results"]]
    for kind, ylabel, key in (("latency", "p50 latency (ms), whiskers p90", "p50_ms"),
                              ("speedup", "speed-up over eager (p50)", "speedup_vs_eager")):
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4), squeeze=False)
        for ax, (model, wid, w) in zip(axes[0], panels):
            names = list(w["backends"])
            values = [w["backends"][n].get(key) or 0 for n in names]
            if kind == "latency":
                err = [w["backends"][n]["p90_ms"] - w["backends"][n]["p50_ms"] for n in names]
                ax.bar(names, values, yerr=[[0] * len(err), err], color="tab:blue")
            else:
                ax.bar(names, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
                ax.axhline(1, color="black", lw=0.8)
            ax.set_title(f"{model}\n{wid} (batch {w['batch']})", fontsize=9)
            ax.tick_params(axis="x", rotation=60, labelsize=7)
            ax.set_ylabel(ylabel, fontsize=8)
        _save(plt, fig, out, kind, files)


def _concurrency_plot(plt, results: dict, out: Path, files: dict) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    serving = results.get("serving", {})
    if serving.get("status") == "timed":
        levels = sorted(serving["throughput"], key=int)
        ax.plot([int(c) for c in levels], [serving["throughput"][c]["throughput_items_s"] for c in levels], "o-",
                label="shelfml async client")
        pa = serving.get("perf_analyzer", {}).get("levels", {})
        measured = [c for c in levels if pa.get(c, {}).get("status") == "measured"]
        if measured:
            ax.plot([int(c) for c in measured], [pa[c]["throughput_items_s"] for c in measured], "s--",
                    label="perf_analyzer")
        ax.set_xscale("log", base=2)
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"W4 skipped:\n{serving.get('reason', '')}", ha="center", va="center", wrap=True, fontsize=8)
    ax.set_xlabel("concurrent requests (batch 1 each)")
    ax.set_ylabel("requests / s")
    ax.set_title("W4: served tagger throughput vs concurrency", fontsize=9)
    _save(plt, fig, out, "concurrency", files)


def _batch_plot(plt, results: dict, out: Path, files: dict) -> None:
    """p50 latency against batch size, per model timed at more than one batch size."""
    tagger = {k: m for k, m in results["models"].items() if len({w["batch"] for w in m["results"].values()}) > 1}
    fig, axes = plt.subplots(1, max(1, len(tagger)), figsize=(5 * max(1, len(tagger)), 4), squeeze=False)
    for ax, (model, m) in zip(axes[0], tagger.items()):
        points = {w["batch"]: w for wid, w in m["results"].items()}
        batches = sorted(points)
        for name in points[batches[0]]["backends"]:
            ax.plot(batches, [points[b]["backends"][name]["p50_ms"] for b in batches], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (64 tokens in, 16 out)")
        ax.set_ylabel("p50 latency per batch (ms)")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    _save(plt, fig, out, "batch", files)


def _save(plt, fig, out: Path, kind: str, files: dict) -> None:
    fig.tight_layout()
    fig.savefig(out / PLOTS[kind], dpi=110)
    plt.close(fig)
    files[kind] = PLOTS[kind]


def plots(results: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    for plot in (_bar_plots, _concurrency_plot, _batch_plot):
        plot(plt, results, out, files)
    return files


def write_outputs(results: dict, out: Path) -> None:
    """Goals, then results.json, report.md, README-results.md and the plots."""
    results["goals"] = evaluate_goals(results)
    results["files"] = {"json": "results.json", "report": "report.md", "readme_section": "README-results.md",
                        "plots": plots(results, out)}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(markdown(results), encoding="utf-8")
    (out / "README-results.md").write_text(readme_section(results), encoding="utf-8")
