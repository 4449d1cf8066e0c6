#!/usr/bin/env bash
# Ranks the experts of a task2vec store for a target task with nothing but Qdrant's REST Query
# API: a cosine prefetch on the `model2vec` index vector, re-scored by the formula
# `$score + weight * complexity` (docs/schema.md, "Ranking in any language").
#
# Usage: select_formula.sh INDEX_VECTOR.json [WEIGHT [PREFETCH [LIMIT]]]
#
#   INDEX_VECTOR.json  the target's index vector as a JSON array of numbers: the store's
#                      transform applied to the target's Fisher vector (docs/schema.md,
#                      "Index vector"); its length is the store's dimension.
#   WEIGHT             weight of the complexity term in cosine units: about 0.27 × the
#                      d_asym alpha (default 0.041, for alpha = 0.15)
#   PREFETCH           experts fetched by cosine before re-scoring (default 100)
#   LIMIT              experts returned (default 10)
#
# Environment: QDRANT_URL (REST, default http://localhost:6333), QDRANT_API_KEY (optional),
# COLLECTION (default task2vec_experts: the `experts` collection under the default prefix).
# Prints Qdrant's JSON answer: result.points[] with id, score and the payload fields
# key, name and complexity, best first.
set -euo pipefail

if [[ $# -lt 1 || ! -r $1 ]]; then
    echo "usage: $0 INDEX_VECTOR.json [WEIGHT [PREFETCH [LIMIT]]]" >&2
    exit 2
fi
vector_file=$1
weight=${2:-0.041}
prefetch=${3:-100}
limit=${4:-10}
url=${QDRANT_URL:-http://localhost:6333}
collection=${COLLECTION:-task2vec_experts}

headers=(-H 'Content-Type: application/json')
if [[ -n ${QDRANT_API_KEY:-} ]]; then
    headers+=(-H "api-key: ${QDRANT_API_KEY}")
fi

# The vector is tens of thousands of numbers: the body goes through standard input, not the
# command line.
{
    printf '{"prefetch": {"query": '
    cat "$vector_file"
    printf ', "using": "model2vec", "limit": %d},' "$prefetch"
    printf ' "query": {"formula": {"sum": ["$score", {"mult": [%s, "complexity"]}]},' "$weight"
    printf ' "defaults": {"complexity": 0}},'
    printf ' "limit": %d, "with_payload": ["key", "name", "complexity"]}' "$limit"
} | curl --silent --show-error --fail-with-body -X POST \
    "${url%/}/collections/${collection}/points/query" "${headers[@]}" --data-binary @-
echo
