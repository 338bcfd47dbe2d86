"""Parses a Prometheus/OpenMetrics exposition (stdin) with the official Python client's parser
and prints its families as JSON: {name: {"type": ..., "samples": [[name, labels, value], ...]}}.
A malformed exposition raises, failing the calling test."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(families))
