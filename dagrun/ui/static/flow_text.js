// Which format a flow file's text is written in: JSON when it opens with "{", YAML otherwise (a JSON
// flow is an object); for an uploaded file, its name's extension says.

export function formatOfText(text) {
  return text.trimStart().startsWith("{") ? "json" : "yaml";
}

export function formatOfFile(file, text) {
  if (/\.json$/i.test(file.name)) return "json";
  if (/\.ya?ml$/i.test(file.name)) return "yaml";
  return formatOfText(text);
}
