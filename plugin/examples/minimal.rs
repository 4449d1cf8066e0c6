//! Smallest program using Qdrant Edge: create a shard with one named cosine vector, upsert a
//! point with payload, query it back by cosine. Used to measure the engine's build cost.

use qdrant_edge::external::serde_json::json;
use qdrant_edge::{
    Distance, EdgeConfig, EdgeShard, EdgeVectorParams, NamedQuery, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, QueryRequest, ScoringQuery, UpdateOperation,
    VectorInternal, Vectors, WithPayloadInterface, WithVector,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("qdrant-edge-minimal-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = EdgeConfig::builder()
        .vector("v", EdgeVectorParams::builder(4, Distance::Cosine).build())
        .build();
    let shard = EdgeShard::new(&dir, config)?;
    let point = PointStruct::new(
        PointId::NumId(1),
        Vectors::new_named([("v", vec![1.0_f32, 0.0, 0.0, 0.0])]),
        json!({"name": "one"}),
    );
    shard.update(UpdateOperation::PointOperation(
        PointOperations::UpsertPoints(PointInsertOperations::PointsList(vec![point.into()])),
    ))?;
    let hits = shard.query(QueryRequest {
        prefetches: vec![],
        query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(
            VectorInternal::Dense(vec![1.0, 0.1, 0.0, 0.0]),
            "v",
        )))),
        filter: None,
        score_threshold: None,
        limit: 1,
        offset: 0,
        params: None,
        with_vector: WithVector::Bool(false),
        with_payload: WithPayloadInterface::Bool(true),
    })?;
    println!("{hits:?}");
    drop(shard);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
