#!/bin/sh
# prepare_text.sh — fetch a real English text corpus from Debian's archive and write it
# as one plain-text file for the byte-level `text` task (src/train/text.c).
#
#   data/prepare_text.sh [PACKAGE ...]        default: fortunes (~4 MB of fortune cookies)
#
# Each package is fetched with `apt-get download` (no root needed) and unpacked with
# `dpkg -x` into data/text/pkg/ (git-ignored); its fortune databases (files under
# usr/share/games/fortunes without a .dat/.u8 index), or failing those its .txt/.rst
# docs, are concatenated, in sorted order so
# the corpus is the same byte for byte on every machine, into data/text/<first package>.txt.
# The text task holds out the last 10% of that file (task.split: heldout).
#   Use it:  train --config ... --set task.name=text --set task.vocab_size=256 \
#                  --set task.data_path=data/text/fortunes.txt
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/text"
[ $# -gt 0 ] || set -- fortunes
mkdir -p "$out/pkg"
corpus="$out/$1.txt"
tmp="$corpus.tmp"
: > "$tmp"
for pkg in "$@"; do
    (cd "$out" && apt-get download "$pkg") || {
        echo "prepare_text.sh: 'apt-get download $pkg' failed (no network, or no such package in this Debian release)" >&2
        exit 1
    }
    deb=$(ls -t "$out"/"${pkg}"_*.deb | head -n 1)
    dpkg -x "$deb" "$out/pkg/$pkg"
    # Fortune databases if the package has any, else its plain-text docs (e.g. linux-doc).
    files=$(find "$out/pkg/$pkg" -type f -path '*/share/games/fortunes/*' ! -name '*.dat' ! -name '*.u8' | LC_ALL=C sort)
    [ -n "$files" ] || files=$(find "$out/pkg/$pkg" -type f -path '*/doc/*' \( -name '*.txt' -o -name '*.rst' \) |
                               LC_ALL=C sort)
    [ -n "$files" ] || { echo "prepare_text.sh: $pkg has no fortune or plain-text doc files" >&2; exit 1; }
    # shellcheck disable=SC2086
    cat $files >> "$tmp"
done
mv "$tmp" "$corpus"
bytes=$(wc -c < "$corpus")
echo "wrote $corpus: $bytes bytes (training split: first 90%, held out: last 10%)"
