{{/* Names and labels. */}}
{{- define "herald.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end -}}

{{- define "herald.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage.name }}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The stages to deploy, as a JSON list of
{name, binary, args, section, group, topics, scaled, values}.
*/}}
{{- define "herald.stages" -}}
{{- $v := .Values -}}
{{- $prefix := $v.config.topics.prefix -}}
{{- $stages := list -}}
{{- if $v.router.enabled -}}
{{- $stages = append $stages (dict "name" "router" "binary" "herald-router" "args" (list) "section" "router" "group" $v.router.config.group "topics" (list (printf "%s.notifications" $prefix)) "scaled" true "values" $v.router) -}}
{{- end -}}
{{- range $channel := list "push" "sms" "email" "webhook" -}}
{{- $c := index $v.deliver.channels $channel -}}
{{- if $c.enabled -}}
{{- $topics := list -}}
{{- range $lane := list "urgent" "normal" "bulk" -}}
{{- $topics = append $topics (printf "%s.%s.%s" $prefix $channel $lane) -}}
{{- end -}}
{{- $stages = append $stages (dict "name" (printf "deliver-%s" $channel) "binary" "herald-deliver" "args" (list "--channel" $channel) "section" "deliver" "sectionValues" (mergeOverwrite (deepCopy $v.deliver.config) (deepCopy ($c.config | default dict)) (dict "group" (printf "%s-%s" $v.deliver.groupPrefix $channel))) "group" (printf "%s-%s" $v.deliver.groupPrefix $channel) "topics" $topics "scaled" true "values" $c) -}}
{{- end -}}
{{- end -}}
{{- if $v.tracker.enabled -}}
{{- $stages = append $stages (dict "name" "tracker" "binary" "herald-tracker" "args" (list) "section" "tracker" "scaled" false "values" $v.tracker) -}}
{{- end -}}
{{- if $v.scaler.enabled -}}
{{- $stages = append $stages (dict "name" "scaler" "binary" "herald-scaler" "args" (list) "section" "scaler" "scaled" false "values" $v.scaler) -}}
{{- end -}}
{{- if $v.sandbox.enabled -}}
{{- $stages = append $stages (dict "name" "sandbox" "binary" "herald-sandbox" "args" (list) "section" "sandbox" "sectionValues" (dict "http_listen" (printf "0.0.0.0:%d" (int $v.adminPort)) "smtp_listen" "0.0.0.0:2525") "scaled" false "values" $v.sandbox) -}}
{{- end -}}
{{- toJson $stages -}}
{{- end -}}

{{/*
TOML rendering. Helm reads every number in values as a float, and its
toToml writes 12 as 12.0, which Herald's integer settings reject; these
helpers write whole numbers as integers.
*/}}
{{- define "herald.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ $v | toJson }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "herald.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ $k | toJson }} = {{ include "herald.tomlValue" (index $v $k) }}{{ end }} }
{{- else if kindIs "invalid" $v -}}{{ fail "TOML has no null: remove the key instead of setting it to null" }}
{{- end -}}
{{- end -}}

{{/* A config file from a dict of sections (each a dict). */}}
{{- define "herald.toml" -}}
{{- range $section := keys . | sortAlpha }}
[{{ $section }}]
{{- $body := index $ $section }}
{{- range $k := keys $body | sortAlpha }}
{{ $k }} = {{ include "herald.tomlValue" (index $body $k) }}
{{- end }}
{{ end -}}
{{- end -}}

{{/* The config file of one stage: {root, stage}. */}}
{{- define "herald.stageConfig" -}}
{{- $v := .root.Values -}}
{{- $stage := .stage -}}
{{- $sections := dict "kafka" (deepCopy $v.kafka) "log" (deepCopy $v.config.log) "admin" (dict "listen" (printf "0.0.0.0:%d" (int $v.adminPort))) -}}
{{- if eq $stage.name "sandbox" -}}
{{- $sections = dict "log" (deepCopy $v.config.log) -}}
{{- else if ne $stage.name "scaler" -}}
{{- $_ := set $sections "topics" (deepCopy $v.config.topics) -}}
{{- $_ := set $sections "codec" (deepCopy $v.config.codec) -}}
{{- end -}}
{{- if eq $stage.name "scaler" -}}
{{- $groups := list -}}
{{- range $s := include "herald.stages" .root | fromJsonArray -}}
{{- if $s.scaled -}}
{{- $g := dict "group" $s.group "topics" $s.topics -}}
{{- with $s.values.latencyObjective }}{{ $_ := set $g "latency_objective" . }}{{ end -}}
{{- with $s.values.initialServiceRate }}{{ $_ := set $g "initial_service_rate" (float64 .) }}{{ end -}}
{{- $groups = append $groups $g -}}
{{- end -}}
{{- end -}}
{{- $_ := set $sections "scaler" (merge (dict "groups" $groups) (deepCopy ($v.scaler.config | default dict))) -}}
{{- else if $stage.sectionValues -}}
{{- $_ := set $sections $stage.section $stage.sectionValues -}}
{{- else if $stage.section -}}
{{- $_ := set $sections $stage.section (deepCopy ($stage.values.config | default dict)) -}}
{{- end -}}
{{- include "herald.toml" $sections -}}
{{- end -}}

{{/* A stage's pod settings: podDefaults, then the stage's own keys. */}}
{{- define "herald.pod" -}}
{{- $d := deepCopy .root.Values.podDefaults -}}
{{- $s := omit .stage.values "enabled" "replicas" "config" "latencyObjective" "initialServiceRate" "autoscaling" -}}
{{- toJson (mergeOverwrite $d (deepCopy $s)) -}}
{{- end -}}
