-- Unknown outcomes: since when a send whose answer never came may have reached the vendor (NULL: nothing in
-- doubt), how many sends had an unknown outcome, and how many went again after one and succeeded (each a
-- possible duplicate ticket at the vendor).
ALTER TABLE deliveries ADD COLUMN in_doubt_since BIGINT;
ALTER TABLE deliveries ADD COLUMN unknowns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
