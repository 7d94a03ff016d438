// Renders an Ollama Modelfile TEMPLATE with Go's text/template over data shaped as Ollama's
// (api.Message, api.ToolCall; arguments keep their order and print as compact JSON, as Ollama's
// ordered ToolCallFunctionArguments does). Reads {"template", "messages", "tools"} as JSON on stdin.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Args [][2]any // [key, value] pairs, in order

func (a Args) String() string {
	parts := make([]string, len(a))
	for i, kv := range a {
		k, _ := json.Marshal(kv[0])
		v, _ := json.Marshal(kv[1])
		parts[i] = string(k) + ":" + string(v)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

type Function struct {
	Name      string `json:"name"`
	Arguments Args   `json:"arguments"`
}

type ToolCall struct {
	Function Function `json:"function"`
}

type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	ToolCalls []ToolCall `json:"tool_calls"`
}

type Input struct {
	Template string           `json:"template"`
	Messages []Message        `json:"messages"`
	Tools    []map[string]any `json:"tools"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Parse(in.Template))
	data := map[string]any{"Messages": in.Messages, "Tools": in.Tools}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
