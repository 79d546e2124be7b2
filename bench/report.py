"""Bars and the table: judge each figure against its bar and render Markdown.

A bar is judged on the median of the runs (the spread is shown beside it).
A figure that could not be measured is "n/a" with the reason, never a pass.
Bars are what smsuper already clears (PASS / FAIL); goals are the targets of the
performance issue not all of which are reached yet (met / missed), shown beside the
ratio they judge.
"""

from __future__ import annotations

from typing import Dict, List, Optional

PASS, FAIL, NA, INFO = "PASS", "FAIL", "n/a", "—"
MET, MISSED = "met", "missed"


def _med(stat: Optional[Dict]) -> Optional[float]:
    return None if not stat else stat.get("median")


def spread(stat: Optional[Dict], fmt: str = "{:,.0f}", unit: str = "") -> str:
    """`median (min–max)`, or the median alone for a single run."""
    if not stat or stat.get("median") is None:
        return "n/a"
    text = fmt.format(stat["median"]) + unit
    if len(stat.get("runs", [])) > 1:
        text += f" ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"
    return text


def verdict(ok: Optional[bool]) -> str:
    return NA if ok is None else (PASS if ok else FAIL)


class Table:
    def __init__(self) -> None:
        self.rows: List[List[str]] = []
        self.bars: List[Dict] = []

    def row(self, number: str, figure: str, smsuper: str, baselines: str = "", bar: str = "",
            result: str = INFO) -> None:
        self.rows.append([number, figure, smsuper, baselines, bar, result])

    def judge(self, number: str, figure: str, smsuper: str, baselines: str, bar: str, ok: Optional[bool],
              value=None, note: str = "") -> None:
        self.row(number, figure, smsuper, baselines, bar + (f" ({note})" if note else ""), verdict(ok))
        self.bars.append({"figure": number, "what": figure, "bar": bar, "value": value, "pass": ok,
                          "note": note})

    def goal(self, number: str, figure: str, smsuper: str, baselines: str, goal: str, ok: Optional[bool],
             value=None, note: str = "") -> None:
        """A target of the performance work: met or missed, never a failure of the run."""
        self.row(number, figure, smsuper, baselines, "goal " + goal + (f" ({note})" if note else ""),
                 NA if ok is None else (MET if ok else MISSED))
        self.bars.append({"figure": number, "what": figure, "goal": goal, "value": value, "met": ok, "note": note})

    def markdown(self) -> str:
        head = ["#", "figure", "smsuper", "baselines (same run)", "bar", "result"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _error_row(table: Table, number: str, what: str, figure: Dict) -> bool:
    if figure.get("skipped"):
        table.row(number, what, "not run", "", "(left out by --only)", NA)
        return True
    if "error" in figure:
        table.judge(number, what, "error", "", figure["error"].splitlines()[0][:160], None)
        return True
    return False


def build(figures: Dict) -> Table:
    table = Table()
    names = {"bare-gunicorn": "bare", "seed-style": "seed", "nginx-static": "nginx",
             "smsuper-no-metrics": "smsuper without metrics", "official-toolkit": "toolkit"}

    # 1. throughput
    tp = figures.get("throughput", {"skipped": True})
    if not _error_row(table, "1", "/invocations throughput", tp):
        for connections, stats in tp.items():
            ratios = stats.get("ratios", {})
            cpu_ratios = stats.get("cpu_ratios", {})
            stats = {n: s for n, s in stats.items() if n not in ("ratios", "cpu_ratios")}
            mine = stats["smsuper"]
            others = " · ".join(f"{names.get(n, n)} {spread(s['rps'])}" for n, s in stats.items() if n != "smsuper")
            table.row("1", f"/invocations req/s, {connections} conns", spread(mine["rps"]), others)
            others = " · ".join(f"{names.get(n, n)} {spread(s['p50_ms'], '{:.1f}')} / {spread(s['p99_ms'], '{:.1f}')}"
                                for n, s in stats.items() if n != "smsuper")
            table.row("1", f"p50 / p99 latency ms, {connections} conns",
                      f"{spread(mine['p50_ms'], '{:.1f}')} / {spread(mine['p99_ms'], '{:.1f}')}", others)
            if "server_cpu_us_per_request" in mine:
                others = " · ".join(f"{names.get(n, n)} {spread(s['server_cpu_us_per_request'])}"
                                    for n, s in stats.items() if n not in ("smsuper",))
                table.row("1", f"server CPU µs per request (all the stack's processes), {connections} conns",
                          spread(mine["server_cpu_us_per_request"]), others)
            errors = {n: s["errors"] for n, s in stats.items() if s["errors"]}
            note = f"wrk errors: {errors}" if errors else ""
            bare = ratios.get("smsuper/bare-gunicorn")
            ratio = _med(bare)
            table.judge("1", f"smsuper / bare gunicorn req/s, {connections} conns (median of per-round ratios)",
                        spread(bare, "{:.2f}", "×"), "", "≥ 0.8×",
                        None if ratio is None else ratio >= 0.8 and not mine["errors"], ratio, note)
            seed = ratios.get("smsuper/seed-style")
            over_seed = _med(seed)
            table.judge("1", f"smsuper / seed-style req/s, {connections} conns (median of per-round ratios)",
                        spread(seed, "{:.2f}", "×"), "", "> 1×",
                        None if over_seed is None else over_seed > 1.0 and not mine["errors"], over_seed)
            table.goal("1", f"smsuper / seed-style req/s, {connections} conns", spread(seed, "{:.2f}", "×"), "",
                       "≥ 1.3×", None if over_seed is None else over_seed >= 1.3, over_seed)
            toolkit = ratios.get("smsuper/official-toolkit")
            over_toolkit = _med(toolkit)
            table.goal("1", f"smsuper / official toolkit req/s, {connections} conns (median of per-round ratios)",
                       spread(toolkit, "{:.2f}", "×"), "", "≥ 1×",
                       None if over_toolkit is None else over_toolkit >= 1.0, over_toolkit,
                       "" if toolkit else "the toolkit was not measured")
            cpu = cpu_ratios.get("smsuper/bare-gunicorn")
            cpu_ratio = _med(cpu)
            table.goal("1", f"smsuper / bare gunicorn server CPU per request, {connections} conns, metrics on",
                       spread(cpu, "{:.2f}", "×"), f"smsuper {spread(mine['server_cpu_us_per_request'])} µs · bare "
                       f"{spread(stats.get('bare-gunicorn', {}).get('server_cpu_us_per_request'))} µs", "≤ 0.85×",
                       None if cpu_ratio is None else cpu_ratio <= 0.85, cpu_ratio)
            if "smsuper-no-metrics/bare-gunicorn" in ratios:
                table.row("1", f"diagnostic: smsuper with SMSUPER_METRICS_PORT=0, {connections} conns",
                          f"/ bare {spread(ratios['smsuper-no-metrics/bare-gunicorn'], '{:.2f}', '×')} · "
                          f"/ seed {spread(ratios['smsuper-no-metrics/seed-style'], '{:.2f}', '×')}",
                          f"smsuper with metrics / without: {spread(ratios['smsuper/smsuper-no-metrics'], '{:.2f}', '×')}",
                          "(not judged)")

    # 2. /ping while busy
    ping = figures.get("ping_busy", {"skipped": True})
    if not _error_row(table, "2", "/ping while busy", ping):
        mine, seed = ping["smsuper"], ping.get("seed-style", {})
        seed_text = (f"seed p99 {spread(seed.get('p99_ms'), '{:.0f}')} ms, max {seed.get('max_ms', 0):.0f} ms, "
                     f"{seed.get('over_2s', 0)} over 2 s, {seed.get('failures', 0)} failed") if seed else ""
        table.judge("2", f"/ping p50 / p99 ms, {mine['busy_clients']} clients × 1 s predictions on 2 workers",
                    f"{spread(mine['p50_ms'], '{:.1f}')} / {spread(mine['p99_ms'], '{:.1f}')}", seed_text,
                    "p99 < 50 ms", _med(mine["p99_ms"]) < 50, _med(mine["p99_ms"]))
        table.judge("2", "/ping max ms; pings over 2 s or failed", f"{mine['max_ms']:.0f}; "
                    f"{mine['over_2s']} over 2 s, {mine['failures']} failed of {mine['pings']}", "",
                    "none over 2 s", mine["over_2s"] == 0 and mine["failures"] == 0, mine["max_ms"])

    # 3 and 4a. start and memory
    start = figures.get("start_memory", {"skipped": True})
    if not _error_row(table, "3", "start to first /ping 200", start):
        warm = start["smsuper"]["start_s"]
        others = " · ".join(f"{names.get(n, n)} {spread(start[n]['start_s'], '{:.3f}')} s"
                            for n in ("bare-gunicorn", "seed-style", "official-toolkit") if "start_s" in start.get(n, {}))
        table.judge("3", "start to first /ping 200 s, warm cache", spread(warm, "{:.3f}"), others, "< 1 s",
                    _med(warm) < 1.0, _med(warm))
        seed_start = _med(start.get("seed-style", {}).get("start_s"))
        table.goal("3", "start to first /ping 200, smsuper (warm) / seed-style", "" if seed_start is None else
                   f"{_med(warm) / seed_start:.2f}×", "", "≤ 1× (no slower than the seed-style stack)",
                   None if seed_start is None else _med(warm) <= seed_start,
                   None if seed_start is None else round(_med(warm) / seed_start, 3))
        toolkit = start.get("official-toolkit", {})
        if "error" in toolkit:
            table.row("3", "official toolkit: start to first /ping 200", "n/a", toolkit["error"][:160])
        elif toolkit:
            table.row("3", "start to first /invocations 200 s (ping answered, then posted until 200)",
                      spread(start["smsuper"].get("first_invocation_s"), "{:.3f}"),
                      " · ".join(f"{names.get(n, n)} {spread(start[n].get('first_invocation_s'), '{:.3f}')} s"
                                 for n in ("bare-gunicorn", "seed-style", "official-toolkit") if n in start),
                      "(the toolkit's /ping answers 200 before its workers have loaded the model)")
        cold = start["smsuper-cold"]
        cold_rss = cold.get("memory", {}).get("pid1_rss_mib")
        table.row("3", "start to first /ping 200 s, cold cache (first start ever)", spread(cold["start_s"], "{:.3f}"),
                  f"PID 1 RSS after such a start {spread(cold_rss, '{:.1f}')} MiB" if cold_rss else "",
                  "(extracts and compiles once; an image that ran --version at build time never does)")
        memory = start["smsuper"]["memory"]
        after_load = figures.get("pid1_after_load", {})
        after = f", after figure 1's load {after_load['pid1_rss_mib']:.1f}" if "pid1_rss_mib" in after_load else ""
        scraped = figures.get("metrics_scrape", {}).get("pid1_rss_mib_after")
        if scraped:
            after += f", after figure 8's restarts and scrapes {scraped:.1f}"
        worst = max(_med(memory["pid1_rss_mib"]), after_load.get("pid1_rss_mib", 0), scraped or 0)
        table.judge("4", "PID 1 RSS MiB (at rest" + (", and after load; the bar takes the largest" if after else "") + ")",
                    spread(memory["pid1_rss_mib"], "{:.1f}") + after, f"PID 1 USS {spread(memory['pid1_uss_mib'], '{:.1f}')}",
                    "< 20 MB (19.07 MiB)", worst < 20e6 / 2 ** 20, worst)
        table.goal("4", "PID 1 RSS MiB in serve (the largest of the readings above)", f"{worst:.1f}", "",
                   "≤ 13 MiB", worst <= 13, worst)
        others = " · ".join(f"{names.get(n, n)} {spread(start[n]['memory']['rss_mib'], '{:.0f}')} / "
                            f"{spread(start[n]['memory']['pss_mib'], '{:.0f}')} ({int(_med(start[n]['memory']['processes']))} procs)"
                            for n in ("bare-gunicorn", "seed-style", "official-toolkit") if "memory" in start.get(n, {}))
        table.row("4", "whole stack, sum of RSS / PSS MiB, trivial model",
                  f"{spread(memory['rss_mib'], '{:.0f}')} / {spread(memory['pss_mib'], '{:.0f}')} "
                  f"({int(_med(memory['processes']))} procs)", others)
        roles = memory.get("by_role_pss_mib", {})
        if roles:
            table.row("4", "PSS MiB by role", ", ".join(f"{k} {v:.1f}" for k, v in roles.items()))
        table.judge("4", "PID 1 idle: wake-ups/s, CPU ms/s", f"{spread(memory['wakeups_per_s'], '{:.1f}')}, "
                    f"{spread(memory['cpu_ms_per_s'], '{:.2f}')}", "", "no busy polling (< 5 wake-ups/s)",
                    _med(memory["wakeups_per_s"]) < 5, _med(memory["wakeups_per_s"]))
    mm = figures.get("model_memory", {"skipped": True})
    if not _error_row(table, "4", "model memory", mm):
        pre, no, trivial = mm["preload"], mm["no_preload"], mm["trivial"]
        table.judge("4", f"{mm['model_mib']} MiB model, {mm['workers']} workers, SMSUPER_PRELOAD_MODEL=true: "
                    "model copies resident (gunicorn PSS, less its PSS with the trivial model)",
                    f"{spread(pre['model_copies'], '{:.2f}')} copies (gunicorn PSS {spread(pre['gunicorn_pss_mib'], '{:.0f}')} MiB)",
                    f"without preload: {spread(no['model_copies'], '{:.2f}')} copies (PSS "
                    f"{spread(no['gunicorn_pss_mib'], '{:.0f}')} MiB); trivial model: PSS "
                    f"{spread(trivial['gunicorn_pss_mib'], '{:.0f}')} MiB",
                    "close to 1 copy (< 1.25), not 1 per worker", _med(pre["model_copies"]) < 1.25,
                    _med(pre["model_copies"]))
        table.judge("4", "workers' total unique memory (USS) MiB, same model",
                    f"preload: {spread(pre['workers_uss_mib'], '{:.0f}')} (master USS "
                    f"{spread(pre['master_uss_mib'], '{:.0f}')})",
                    f"without preload: {spread(no['workers_uss_mib'], '{:.0f}')} = "
                    f"{_med(no['workers_uss_copies']):.2f} copies",
                    "≤ 1 copy", _med(pre["workers_uss_copies"]) <= 1.0, _med(pre["workers_uss_copies"]))

    # 5. SIGTERM
    term = figures.get("sigterm", {"skipped": True})
    if not _error_row(table, "5", "SIGTERM with 4 in flight", term):
        mine, seed = term["smsuper"], term["seed-style"]
        table.judge("5", f"SIGTERM, 4 requests of {term['request_seconds']:g} s in flight: completed",
                    f"{spread(mine['completed'], '{:.0f}')}/4", f"seed {spread(seed['completed'], '{:.0f}')}/4 "
                    f"(statuses {seed['statuses'][0]})", "all 4", mine["all_completed_every_run"],
                    _med(mine["completed"]))
        gone = _med(mine["gone_after_last_completed_ms"])
        table.judge("5", "every process gone, ms after the last answer", spread(mine["gone_after_last_completed_ms"], "{:.0f}"),
                    f"seed {spread(seed['gone_after_last_answer_ms'], '{:.0f}')} "
                    f"(gone {spread(seed['gone_after_sigterm_ms'], '{:.0f}')} ms after SIGTERM)",
                    "< 1000 ms", None if gone is None else gone < 1000 and mine["leftover_processes"] == 0, gone)

    # 6. relay
    relay = figures.get("log_relay", {"skipped": True})
    if not _error_row(table, "6", "log relay", relay):
        ratio = _med(relay["ratio"])
        table.judge("6", f"training log relay MiB/s ({relay['mib']} MiB of {relay['line_bytes']}-byte lines)",
                    spread(relay["smsuper_mib_per_s"]), f"cat {spread(relay['cat_mib_per_s'])}",
                    f"≥ 0.8× cat: {spread(relay['ratio'], '{:.2f}', '×')} (median of per-pair ratios)",
                    ratio >= 0.8, ratio)
        if "smsuper_cpu_s_per_gib" in relay:
            table.row("6", "relaying process's own CPU s per GiB", spread(relay["smsuper_cpu_s_per_gib"], "{:.2f}"),
                      f"cat {spread(relay['cat_cpu_s_per_gib'], '{:.2f}')}", "(PID 1's includes its start and the job's setup)")

    # 7. --version
    versions = figures.get("version_start", {"skipped": True})
    if not _error_row(table, "7", "--version start", versions):
        for version, stat in versions["pythons"].items():
            if "error" in stat:
                table.row("7", f"`--version` start ms, CPython {version}", "error", stat["error"][:120])
                continue
            warm = {k: (v * 1000 if isinstance(v, (int, float)) else [x * 1000 for x in v])
                    for k, v in stat["warm_s"].items()}
            alone = {k: (v * 1000 if isinstance(v, (int, float)) else [x * 1000 for x in v])
                     for k, v in stat["python_alone_s"].items()}
            table.row("7", f"`--version` start ms, CPython {version}", spread(warm, "{:.1f}"),
                      f"python -c pass {spread(alone, '{:.1f}')} · first start {stat['cold_s'] * 1000:.0f}")
        table.row("7", "smsuper.pyz size", f"{versions['pyz_bytes']:,} bytes ({versions['pyz_bytes'] / 1e6:.2f} MB)")

    # 8. metrics
    metrics = figures.get("metrics_scrape", {"skipped": True})
    if not _error_row(table, "8", "metrics scrape", metrics):
        if not metrics.get("available"):
            table.judge("8", "metrics scrape ms after worker restarts", "not available", "",
                        "< 100 ms", None, None, metrics.get("reason", ""))
        else:
            table.judge("8", f"metrics scrape ms after {metrics['restarts']} worker restarts",
                        spread(metrics["scrape_ms"], "{:.1f}"),
                        f"before the restarts {spread(metrics['scrape_ms_before'], '{:.1f}')}; "
                        f"{metrics['distinct_worker_pids']} distinct worker pids answered, endpoint reports "
                        f"{metrics.get('restarts_reported')} restarts; "
                        f"{metrics['scrape_bytes']:,} bytes; restarts took {metrics['restart_seconds']} s",
                        "< 100 ms", _med(metrics["scrape_ms"]) < 100, _med(metrics["scrape_ms"]))
    # 9. the real model
    model = figures.get("real_model", {"skipped": True})
    if not _error_row(table, "9", "real model (scikit-learn)", model):
        _real_model_rows(table, model, names)
    multi = figures.get("multi_model", {"skipped": True})
    if not _error_row(table, "10", "multi-model endpoints", multi):
        _multi_model_rows(table, multi)
    return table


# The goals of the multi-model issue, judged on the medians.
MME_LOAD_GOAL = 0.25      # smsuper's trivial load time / the toolkit's, at most
MME_GIVE_BACK_GOAL = 0.95  # share of a model's memory an unload gives back, at least
MME_RSS_GROWTH_KB = 1024   # PID 1's RSS growth over the cycles that still counts as none (allocator granularity)


def no_leak(cycles: Dict) -> bool:
    return cycles["fds_after"] <= cycles["fds_before"] and \
        cycles["rss_kb_after"] - cycles["rss_kb_before"] <= MME_RSS_GROWTH_KB


def _multi_model_rows(table: Table, multi: Dict) -> None:
    toolkit = "official-toolkit"
    times = multi["load_s"]
    for kind, label in (("trivial", "a trivial model"), ("big", f"a {multi['big_mib']} MiB model")):
        table.row("10", f"POST /models to 200, {label}, s", spread(times["smsuper"][kind], "{:.3f}"),
                  f"toolkit {spread(times[toolkit][kind], '{:.3f}')}")
    table.row("10", "DELETE /models/NAME to 200, a trivial model, s", spread(times["smsuper"]["unload"], "{:.3f}"),
              f"toolkit {spread(times[toolkit]['unload'], '{:.3f}')}", "(smsuper answers once the model's processes are "
              "gone; see the unload rows for the toolkit)")
    ratio = multi["load_ratios"]["trivial"]
    table.goal("10", "smsuper / toolkit load time, trivial model (median of per-load ratios)",
               spread(ratio, "{:.2f}", "×"), "", f"≤ {MME_LOAD_GOAL:g}×",
               None if _med(ratio) is None else _med(ratio) <= MME_LOAD_GOAL, _med(ratio))
    for label, case in multi["throughput"].items():
        mine, theirs = case["smsuper"], case[toolkit]
        table.row("10", f"invocations req/s, {label}, {multi['connections']} conns", spread(mine["rps"]),
                  f"toolkit {spread(theirs['rps'])}")
        table.row("10", f"p50 / p99 ms, {label}", f"{spread(mine['p50_ms'], '{:.1f}')} / {spread(mine['p99_ms'], '{:.1f}')}",
                  f"toolkit {spread(theirs['p50_ms'], '{:.1f}')} / {spread(theirs['p99_ms'], '{:.1f}')}")
        table.row("10", f"server CPU µs per request, {label}", spread(mine["server_cpu_us_per_request"]),
                  f"toolkit {spread(theirs['server_cpu_us_per_request'])}")
        errors = {n: case[n]["errors"] for n in ("smsuper", toolkit) if case[n]["errors"]}
        table.goal("10", f"smsuper / toolkit req/s, {label} (median of per-round ratios)",
                   spread(case["ratio"], "{:.2f}", "×"), "", "≥ 1×",
                   None if _med(case["ratio"]) is None else _med(case["ratio"]) >= 1.0 and not mine["errors"],
                   _med(case["ratio"]), f"wrk errors: {errors}" if errors else "")
    memory = multi["memory"]
    table.row("10", f"whole container with {multi['models']} models loaded, sum of PSS / of RSS, MiB",
              f"{memory['smsuper']['loaded']['pss_mib']:,.0f} / {memory['smsuper']['loaded']['rss_mib']:,.0f}",
              f"toolkit {memory[toolkit]['loaded']['pss_mib']:,.0f} / {memory[toolkit]['loaded']['rss_mib']:,.0f}",
              f"(none loaded: smsuper {memory['smsuper']['none_loaded']['pss_mib']:,.0f}, toolkit "
              f"{memory[toolkit]['none_loaded']['pss_mib']:,.0f} MiB PSS)")
    mine, theirs = multi["unload"]["smsuper"], multi["unload"][toolkit]

    def freed(u: Dict) -> str:
        return (f"{u['unload_freed_pss_mib']:,.0f} of {u['load_took_pss_mib']:,.0f} MiB PSS "
                f"({u['given_back_share']:.1%}; RSS {u['given_back_share_rss']:.1%})")

    table.row("10", f"DELETE of the {multi['big_mib']} MiB model: model processes still alive when it answered",
              f"{mine['model_processes_alive_when_delete_answered']} of {mine['model_processes']}",
              f"toolkit {theirs['model_processes_alive_when_delete_answered']} of {theirs['model_processes']} "
              f"(gone {theirs['seconds_until_gone_after_delete']:.2f} s later)")
    share = mine["given_back_share"]
    table.goal("10", f"memory an unload gives back, the {multi['big_mib']} MiB model (whole container)", freed(mine),
               f"toolkit {freed(theirs)}", f"≥ {MME_GIVE_BACK_GOAL:.0%}",
               None if share is None else share >= MME_GIVE_BACK_GOAL, share)
    cycles = multi["cycles"]
    table.goal("10", f"PID 1 over {cycles['cycles']} load/unload cycles (after {cycles['warm_up_cycles']}): RSS kB, "
                     f"open fds", f"{cycles['rss_kb_before']:,} → {cycles['rss_kb_after']:,}; "
                                  f"{cycles['fds_before']} → {cycles['fds_after']}", "",
               f"no growth (fds; RSS ≤ {MME_RSS_GROWTH_KB} kB)", no_leak(cycles),
               cycles["rss_kb_after"] - cycles["rss_kb_before"])


def _real_model_rows(table: Table, model: Dict, names: Dict[str, str]) -> None:
    agree = model.get("predictions_agree", {})
    table.row("9", f"real model: {model.get('model', '')}; CSV in, CSV out", "",
              "predictions equal to smsuper's: " + ", ".join(f"{names.get(n, n)} {'yes' if ok else 'NO'}"
                                                             for n, ok in agree.items() if n != "smsuper"))
    codecs = model.get("codec_cost_us", {})
    if "error" in codecs:
        table.row("9", "diagnostic: default CSV decode / encode alone", "error", codecs["error"][:160])
    for rows, costs in ({} if "error" in codecs else codecs).items():
        decode, encode = costs["decode_us"], costs["encode_us"]
        table.row("9", f"diagnostic: default CSV decode / encode, CPU µs alone, {rows} row{'s' if int(rows) != 1 else ''}",
                  f"{decode['smsuper']:,.0f} / {encode['smsuper']:,.0f}",
                  " · ".join(f"{names.get(n, n)} {decode[n]:,.0f} / {encode[n]:,.0f}" for n in decode if n != "smsuper"),
                  "(not judged: one process, no HTTP, no model)")
    for label, case in model["cases"].items():
        stats = {n: s for n, s in case.items() if isinstance(s, dict) and "rps" in s}
        mine = stats["smsuper"]
        rows = case["rows"]

        def per(key: str, fmt: str = "{:,.0f}") -> str:
            return " · ".join(f"{names.get(n, n)} {spread(s[key], fmt)}" for n, s in stats.items() if n != "smsuper")

        table.row("9", f"req/s, {label}", spread(mine["rps"]), per("rps"))
        if rows != 1:
            table.row("9", f"rows/s, {label}", spread(mine["rows_per_s"]), per("rows_per_s"))
        table.row("9", f"p50 / p99 ms, {label}",
                  f"{spread(mine['p50_ms'], '{:.1f}')} / {spread(mine['p99_ms'], '{:.1f}')}",
                  " · ".join(f"{names.get(n, n)} {spread(s['p50_ms'], '{:.1f}')} / {spread(s['p99_ms'], '{:.1f}')}"
                             for n, s in stats.items() if n != "smsuper"))
        table.row("9", f"server CPU µs per request, {label}", spread(mine["server_cpu_us_per_request"]),
                  per("server_cpu_us_per_request"))
        errors = {n: s["errors"] for n, s in stats.items() if s["errors"]}
        best = case["ratios"].get("smsuper/best peer")
        others = " · ".join(f"/ {names.get(n.split('/', 1)[1], n)} {spread(r, '{:.2f}', '×')}"
                            for n, r in case["ratios"].items() if n != "smsuper/best peer")
        table.goal("9", f"smsuper / the best peer req/s, {label} (median of per-round ratios)",
                   spread(best, "{:.2f}", "×"), others, "≥ 1.3×",
                   None if _med(best) is None else _med(best) >= 1.3 and not mine["errors"], _med(best),
                   f"wrk errors: {errors}" if errors else "")
