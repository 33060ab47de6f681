/** Small builders for the API's JSON Schemas (shared by api.ts and fleet.ts). */
export type Schema = Record<string, unknown>;

export const str = (extra: Schema = {}): Schema => ({ type: "string", ...extra });
export const dateTime = { type: "string", format: "date-time" };
export const nullableDateTime = { type: ["string", "null"], format: "date-time" };
/** A closed object: unknown properties are rejected. All properties required unless `required` says otherwise. */
export const obj = (
  properties: Record<string, Schema>,
  required: string[] = Object.keys(properties),
): Schema => ({
  type: "object",
  additionalProperties: false,
  properties,
  required,
});
