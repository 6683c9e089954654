#!/usr/bin/env python3
"""Writes peerpool.json, the Grafana dashboard, next to this file.

The dashboard is data; this script keeps its 30-odd panels consistent (ids,
layout, datasource, variables) so a change is one line here. Run it after
editing and commit both: `python3 grafana/dashboards/generate.py`.
tests/observability.rs runs every query of the JSON against a real
Prometheus scraping real nodes.
"""

import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
PSEL = 'instance=~"$instance", peer=~"$peer"'
RATE = "$__rate_interval"

ROWS = [
    ("Overview", [
        ("Peers by state", "stat", "none", [
            (f"sum by (state) (peerpool_peers{{{SEL}}})", "{{state}}"),
        ]),
        ("Ready (every peer with an address has a connection)", "stat", "none", [
            (f"min by (instance) (peerpool_ready{{{SEL}}})", "{{instance}}"),
        ]),
        ("Connections vs target", "timeseries", "none", [
            (f"sum by (peer) (peerpool_connections{{{PSEL}}})", "{{peer}} connections"),
            (f"max by (peer) (peerpool_connection_target{{{PSEL}}})", "{{peer}} target"),
        ]),
        ("Streams opened /s", "timeseries", "ops", [
            (f"sum by (instance) (rate(peerpool_streams_opened_total{{{PSEL}}}[{RATE}]))", "{{instance}}"),
        ]),
        ("Errors /s (stream opens and forwards)", "timeseries", "ops", [
            (f"sum by (instance) (rate(peerpool_stream_open_failures_total{{{PSEL}}}[{RATE}]))", "{{instance}} stream open failures"),
            # `or ... * 0`: a flat zero while no forward has failed yet (the
            # failing results only exist once they happen).
            (f'sum by (instance) (rate(peerpool_forward_connections_total{{{SEL}, result!="ok"}}[{RATE}])) or sum by (instance) (rate(peerpool_forward_connections_total{{{SEL}}}[{RATE}])) * 0', "{{instance}} forward failures"),
        ]),
    ]),
    ("Connections", [
        ("Connections per peer", "timeseries", "none", [
            (f"sum by (peer, direction) (peerpool_connections{{{PSEL}}})", "{{peer}} {{direction}}"),
        ]),
        ("Dial attempts /s by result", "timeseries", "ops", [
            (f"sum by (result) (rate(peerpool_dial_attempts_total{{{PSEL}}}[{RATE}]))", "{{result}}"),
        ]),
        ("Connection restarts by reason", "timeseries", "none", [
            (f"sum by (reason) (increase(peerpool_connection_restarts_total{{{PSEL}}}[{RATE}]))", "{{reason}}"),
        ]),
        ("Connections closed by reason", "timeseries", "none", [
            (f"sum by (reason) (increase(peerpool_connection_closed_total{{{PSEL}}}[{RATE}]))", "{{reason}}"),
        ]),
        ("Backoff before redial", "timeseries", "s", [
            (f"max by (peer) (peerpool_backoff_seconds{{{PSEL}}})", "{{peer}}"),
        ]),
        ("Handshake failures by reason", "timeseries", "none", [
            (f"sum by (reason) (increase(peerpool_handshake_failures_total{{{SEL}}}[{RATE}]))", "{{reason}}"),
        ]),
        ("Inbound connections refused by reason", "timeseries", "none", [
            (f"sum by (reason) (increase(peerpool_inbound_refused_total{{{SEL}}}[{RATE}]))", "{{reason}}"),
        ]),
        ("Peer states", "timeseries", "none", [
            (f"max by (peer, state) (peerpool_peer_state{{{PSEL}}}) == 1", "{{peer}} {{state}}"),
        ]),
        ("Handshake gate: Initials turned away, sources ignored", "timeseries", "none", [
            (f"sum by (verdict) (increase(peerpool_handshake_gate_total{{{SEL}}}[{RATE}]))", "{{verdict}}"),
            (f"sum by (instance) (peerpool_handshake_sources_cooling{{{SEL}}})", "sources cooling off ({{instance}}; their Initials are dropped by the kernel)"),
        ], 'Initials not let through to a handshake (ignored: source cooling off, dropped in the node; refused: handshake.max_pending; retried: a Retry asked), and the sources cooling off now, whose Initials the kernel drops before the node sees them.'),
    ]),
    ("Streams", [
        ("Streams opened /s by peer and strategy", "timeseries", "ops", [
            (f"sum by (peer, strategy) (rate(peerpool_streams_opened_total{{{PSEL}}}[{RATE}]))", "{{peer}} {{strategy}}"),
        ]),
        ("Stream open latency p50 / p99", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (le, peer) (rate(peerpool_stream_open_duration_seconds_bucket{{{PSEL}}}[{RATE}])))", "{{peer}} p50"),
            (f"histogram_quantile(0.99, sum by (le, peer) (rate(peerpool_stream_open_duration_seconds_bucket{{{PSEL}}}[{RATE}])))", "{{peer}} p99"),
        ]),
        ("Active streams", "timeseries", "none", [
            (f"sum by (peer, direction) (peerpool_active_streams{{{PSEL}}})", "{{peer}} {{direction}}"),
        ]),
        ("Stream open failures /s by reason", "timeseries", "ops", [
            (f"sum by (reason) (rate(peerpool_stream_open_failures_total{{{PSEL}}}[{RATE}]))", "{{reason}}"),
        ]),
    ]),
    ("Groups", [
        ("Endpoints by state", "timeseries", "none", [
            (f"sum by (peer, state) (peerpool_endpoints{{{PSEL}}})", "{{peer}} {{state}}"),
        ]),
        ("Share of endpoints ejected", "timeseries", "percentunit", [
            (f'sum by (peer) (peerpool_endpoints{{{PSEL}, state="ejected"}}) / sum by (peer) (peerpool_endpoints{{{PSEL}}}) or sum by (peer) (peerpool_endpoints{{{PSEL}}}) * 0', "{{peer}}"),
        ]),
        ("Ejections", "timeseries", "none", [
            (f"sum by (peer) (increase(peerpool_ejections_total{{{PSEL}}}[{RATE}]))", "{{peer}}"),
        ]),
        ("DNS resolutions by result", "timeseries", "none", [
            (f"sum by (peer, result) (increase(peerpool_dns_resolutions_total{{{PSEL}}}[{RATE}]))", "{{peer}} {{result}}"),
        ]),
        ("Forward retries by reason", "timeseries", "none", [
            (f"sum by (forward, reason) (increase(peerpool_retries_total{{{SEL}}}[{RATE}]))", "{{forward}} {{reason}}"),
        ]),
        ("Config reloads by result", "timeseries", "none", [
            (f"sum by (instance, result) (increase(peerpool_config_reloads_total{{{SEL}}}[{RATE}]))", "{{instance}} {{result}}"),
        ]),
    ]),
    ("Network", [
        ("RTT (min over the peer's connections)", "timeseries", "s", [
            (f"max by (peer) (peerpool_connection_rtt_seconds{{{PSEL}}})", "{{peer}}"),
        ]),
        ("UDP bytes /s", "timeseries", "Bps", [
            (f"sum by (peer, direction) (rate(peerpool_bytes_total{{{PSEL}}}[{RATE}]))", "{{peer}} {{direction}}"),
        ]),
        ("Lost packets /s", "timeseries", "pps", [
            (f"sum by (peer) (rate(peerpool_lost_packets_total{{{PSEL}}}[{RATE}]))", "{{peer}}"),
        ]),
    ]),
    ("Sidecar", [
        ("Forwarded TCP connections /s by result", "timeseries", "ops", [
            (f"sum by (forward, result) (rate(peerpool_forward_connections_total{{{SEL}}}[{RATE}]))", "{{forward}} {{result}}"),
        ]),
        ("Service streams /s by result", "timeseries", "ops", [
            (f"sum by (service, result) (rate(peerpool_service_streams_total{{{SEL}}}[{RATE}]))", "{{service}} {{result}}"),
        ]),
        ("Forwarded connection duration p50 / p99", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (le, forward) (rate(peerpool_forward_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "{{forward}} p50"),
            (f"histogram_quantile(0.99, sum by (le, forward) (rate(peerpool_forward_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "{{forward}} p99"),
        ]),
    ]),
    ("Process", [
        ("CPU (cores)", "timeseries", "none", [
            (f"rate(process_cpu_seconds_total{{{SEL}}}[1m])", "{{instance}}"),
        ]),
        ("Resident memory", "timeseries", "bytes", [
            (f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}"),
        ]),
        ("Open file descriptors", "timeseries", "none", [
            (f"process_open_fds{{{SEL}}}", "{{instance}} open"),
            (f"process_max_fds{{{SEL}}}", "{{instance}} max"),
        ]),
        ("Actor restarts", "timeseries", "none", [
            (f"sum by (actor) (increase(peerpool_actor_restarts_total{{{SEL}}}[{RATE}]))", "{{actor}}"),
        ]),
        ("Streams backlogged (read slower than they arrive)", "timeseries", "none", [
            (f"sum by (instance) (peerpool_streams_backlogged{{{SEL}}})", "{{instance}}"),
        ], "Streams whose received data may wait for its reader: not piped yet, or whose local reader kept a write waiting over 5 ms. While any is, or more than 16 streams are open, the node hands quinn one datagram per receive buffer (bounded memory) instead of whole GRO batches. A level that stays up names slow or stuck local readers."),
    ]),
]


def panel(pid, title, kind, unit, queries, x, y, w, h, description=None):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
    }
    if description:
        p["description"] = description
    p |= {
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(queries)
        ],
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    else:
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    return p


def dashboard():
    panels = []
    pid = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append({
            "id": pid,
            "type": "row",
            "title": row_title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        })
        pid += 1
        y += 1
        width = 8
        for i, (title, kind, unit, queries, *description) in enumerate(row_panels):
            x = (i % 3) * width
            if i and i % 3 == 0:
                y += 8
            panels.append(panel(pid, title, kind, unit, queries, x, y, width, 8, *description))
            pid += 1
        y += 8
    variable_ds = {"type": "prometheus", "uid": "${datasource}"}
    return {
        "title": "peerpool",
        "uid": "peerpool",
        "description": "peerpool: QUIC connection pools per peer, endpoints of peer groups, streams, sidecar forwards. Queries are proven against a real Prometheus by tests/observability.rs.",
        "tags": ["peerpool", "quic"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": variable_ds,
                    "definition": "label_values(peerpool_build_info, instance)",
                    "query": {"query": "label_values(peerpool_build_info, instance)", "refId": "instance"},
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                },
                {
                    "name": "peer",
                    "label": "Peer",
                    "type": "query",
                    "datasource": variable_ds,
                    "definition": 'label_values(peerpool_connection_target{instance=~"$instance"}, peer)',
                    "query": {"query": 'label_values(peerpool_connection_target{instance=~"$instance"}, peer)', "refId": "peer"},
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peerpool.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(f"wrote {out}")
