-- Smaller blob index: drop blobs_pack_offset (pack, offset) and the foreign
-- key blobs.pack -> packs.seq. Same logical schema as
-- migrations/sqlite/0009_blobs_no_pack_index.sql, which says why: prune
-- aggregates per pack in one scan of blobs and removes packs in batches;
-- repack and check take a pack's entries from its own header. Without an
-- index on blobs.pack the foreign key would make every deleted pack row
-- scan blobs; removePacks still deletes a pack's entries before the pack
-- row, in one transaction.

ALTER TABLE blobs DROP CONSTRAINT blobs_pack_fkey;
DROP INDEX blobs_pack_offset;
