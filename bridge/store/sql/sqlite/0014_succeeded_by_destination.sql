-- Succeeded deliveries by destination, newest last, as deliveries_dead holds the dead ones: the deliveries gauge
-- (/metrics, the console) counts each status through its partial index instead of reading every row of the
-- retention window's history, and a listing of one destination's succeeded deliveries reads them in order.
CREATE INDEX deliveries_succeeded ON deliveries (destination, id) WHERE status = 'succeeded';
