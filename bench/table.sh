#!/bin/bash
# Print the figures the benchmarks recorded (bench/summary.sh) as one
# markdown table, in the order they ran, each with its target and whether
# this run met it.  Usage: bench/table.sh SUMMARY_FILE
set -euo pipefail
echo "| figure | this run | target | met |"
echo "|---|---|---|---|"
awk -F'|' '{
    v = $2 + 0; t = $4 + 0
    fmt = ($5 == "x") ? "x%.3f" : ($5 == "ms") ? "%.2f ms" : ($5 == "+ms") ? "%+.2f ms" : "%.0f" $5
    value = ($2 == "") ? "(no figure)" : sprintf(fmt, v)
    if ($3 == "") { printf "| %s | %s | (none) | - |\n", $1, value; next }
    met = ($2 != "") && (($3 == "<=") ? (v <= t) : ($3 == ">=") ? (v >= t) : ($3 == "<") ? (v < t) : (v > t))
    target = sprintf("%s " fmt, $3, t)
    printf "| %s | %s | %s | %s |\n", $1, value, target, met ? "met" : "**not met**"
}' "$1"
