-- Lexical terms read out of coordinated compounds (issue 18): "Maschinen- und Anlagenführer/in"
-- is also "maschinenführer" and "anlagenführer", which a title says ("Anlagenführer (m/w/d)") and
-- whose trigrams the name as written hides. Not aliases: they feed the lexical candidates only,
-- never exact evidence (a made-up compound must not decide an occupation without the LLM).
-- catalogue.refresh_lexical_terms computes them (the compound's head comes from the whole
-- catalogue's words) after every catalogue upsert; rows loaded before it get theirs at the next.
ALTER TABLE occupations ADD COLUMN lexical_terms text[] NOT NULL DEFAULT '{}';

CREATE OR REPLACE FUNCTION jobpipe_occupation_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM occupation_terms WHERE occupation_id = NEW.id;
    INSERT INTO occupation_terms (occupation_id, term)
    SELECT DISTINCT NEW.id, t
      FROM unnest(array_append(NEW.aliases, NEW.name_norm) || NEW.lexical_terms) AS t
     WHERE t IS NOT NULL AND t <> '';
    RETURN NULL;
END $$;

DROP TRIGGER occupations_terms ON occupations;
CREATE TRIGGER occupations_terms AFTER INSERT OR UPDATE OF name_norm, aliases, lexical_terms ON occupations
    FOR EACH ROW EXECUTE FUNCTION jobpipe_occupation_terms();
