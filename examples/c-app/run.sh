#!/bin/sh
# Compiles the shipped example model for this machine with cpucc, links it
# with the runtime's static library using gcc, and runs the C application.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/c-app"
mkdir -p "$out"
cd "$root"
cargo build --quiet -p cpucc -p cpucc-runtime
target/debug/cpucc compile examples/models/conv_relu.onnx --target native -o "$out" --name conv_relu
gcc -O2 -std=c11 -Wall -Wextra -Werror -I "$out" -I runtime/include examples/c-app/main.c \
    "$out/conv_relu.o" target/debug/libcpucc_runtime.a -lpthread -ldl -lm -o "$out/app"
"$out/app"
