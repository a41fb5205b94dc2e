"""XCM: codec, extraction from blocks, matching into journeys."""
