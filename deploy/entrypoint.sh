#!/bin/sh
# SageMaker runs the image with the argument "serve" (and "train" for training images, which
# this one is not). Anything else is passed to the tidal command as it is.
set -e
if [ "$1" = "serve" ]; then
    shift
    exec tidal serve --model-dir "${TIDAL_MODEL_DIR:-/opt/ml/model}" "$@"
fi
exec tidal "$@"
