# shellcheck shell=bash
# Sourced first thing by the scripts in tools/ (`source "$(dirname "$0")/usage.sh" "$@"`): with -h or
# --help as the first argument it prints the script's header comment, which is its usage, and exits
# 0 before the script does anything. A script that takes no arguments then calls usage_no_args "$@".
usage_print() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}
usage_no_args() {
    if [ $# -gt 0 ]; then
        echo "$(basename "$0"): unexpected argument '$1' (it takes none; --help says what it does)" >&2
        exit 2
    fi
}
case "${1:-}" in
-h | --help)
    usage_print
    exit 0
    ;;
esac
