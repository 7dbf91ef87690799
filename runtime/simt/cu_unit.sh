#!/bin/sh
# Writes the C++ unit $2 that includes the .cu file $1 by its absolute path.
printf '#include "%s"\n' "$(realpath "$1")" > "$2"
