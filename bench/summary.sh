# Sourced by the benchmarks: record a figure for the table bench/run.sh
# prints at the end (one line per figure: what|value|op|target|unit).
#   metric "OTP cycles per second" 1776 ">=" 4000 "/s"
metric() {
    if [ -n "${CRMGUARD_BENCH_SUMMARY:-}" ]; then
        printf '%s|%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" "$5" >> "$CRMGUARD_BENCH_SUMMARY"
    fi
    return 0
}
