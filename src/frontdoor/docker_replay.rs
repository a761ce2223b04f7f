//! Replays tests/fixtures/docker/*.jsonl (captured from the real dockerd by
//! scripts/capture-docker-fixture.sh) against the Docker front door's handlers, without
//! dockerd, root or services. (Being written.)
