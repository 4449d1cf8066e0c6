#!/usr/bin/env bash
# Ranks the experts of a task2vec store for a target task with nothing but Qdrant's REST Query
# API: a cosine prefetch on the `model2vec` index vector, re-scored by a formula whose score
# approximates -d_asym (docs/schema.md, "Ranking in any language"):
#
#   2 s |v| * index_norm * $score  -  s * index_norm^2  -  s |v|^2  +  alpha * complexity
#
# Usage: select_formula.sh INDEX_VECTOR.json [ALPHA [PREFETCH [LIMIT [SLOPE]]]]
#
#   INDEX_VECTOR.json  the target's index vector v as a JSON array of numbers: the store's
#                      transform applied to the target's Fisher vector (docs/schema.md,
#                      "The index vector")
#   ALPHA              weight of the complexity term of d_asym (default 0.15)
#   PREFETCH           experts fetched by cosine before re-scoring (default 100)
#   LIMIT              experts returned (default 10)
#   SLOPE              s = kappa / (2 n), n the length of the store's Fisher vectors, kappa
#                      0.78 (default 9.282e-6: EfficientNet-Lite0, n = 42016)
#
# Environment: QDRANT_URL (REST, default http://localhost:6333), QDRANT_API_KEY (optional),
# COLLECTION (default task2vec_experts: the `experts` collection under the default prefix).
# Prints Qdrant's JSON answer: result.points[] with id, score and the payload fields
# key, name and complexity, best first.
set -euo pipefail

if [[ $# -lt 1 || ! -r $1 ]]; then
    echo "usage: $0 INDEX_VECTOR.json [ALPHA [PREFETCH [LIMIT [SLOPE]]]]" >&2
    exit 2
fi
vector_file=$1
alpha=${2:-0.15}
prefetch=${3:-100}
limit=${4:-10}
slope=${5:-9.282e-6}
url=${QDRANT_URL:-http://localhost:6333}
collection=${COLLECTION:-task2vec_experts}

headers=(-H 'Content-Type: application/json')
if [[ -n ${QDRANT_API_KEY:-} ]]; then
    headers+=(-H "api-key: ${QDRANT_API_KEY}")
fi

# |v| from the JSON array, then the formula's constants 2 s |v|, -s and -s |v|^2.
read -r cross square constant < <(
    tr -d '[] \n\r\t' < "$vector_file" | tr ',' '\n' |
        awk -v s="$slope" '{ q += $1 * $1 } END {
            printf "%.9g %.9g %.9g\n", 2 * s * sqrt(q), -s, -s * q }'
)

# The vector is thousands of numbers: the body goes through standard input, not the command
# line.
{
    printf '{"prefetch": {"query": '
    cat "$vector_file"
    printf ', "using": "model2vec", "limit": %d},' "$prefetch"
    printf ' "query": {"formula": {"sum": ['
    printf '{"mult": [%s, "index_norm", "$score"]}, ' "$cross"
    printf '{"mult": [%s, "index_norm", "index_norm"]}, ' "$square"
    printf '%s, {"mult": [%s, "complexity"]}]},' "$constant" "$alpha"
    printf ' "defaults": {"index_norm": 0, "complexity": 0}},'
    printf ' "limit": %d, "with_payload": ["key", "name", "complexity"]}' "$limit"
} | curl --silent --show-error --fail-with-body -X POST \
    "${url%/}/collections/${collection}/points/query" "${headers[@]}" --data-binary @-
echo
