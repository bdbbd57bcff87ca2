//! The panel's two languages. Every string is one row of [`STRINGS`] with both texts, so neither language can be
//! missing a line; a test checks that every key the templates and the script use is in the table.

use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ru,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Ru => "ru",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        match code.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Self::En),
            "ru" => Some(Self::Ru),
            _ => None,
        }
    }

    /// The `lang` cookie, else the best of `Accept-Language`, else English.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let cookie = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().strip_prefix("lang="))
            .find_map(Self::parse);
        if let Some(lang) = cookie {
            return lang;
        }
        let mut best = (0.0_f32, Self::En);
        for item in headers
            .get_all(http::header::ACCEPT_LANGUAGE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or_default().trim();
            let quality = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or_default();
            if let Some(lang) = Self::parse(primary)
                && quality > best.0
            {
                best = (quality, lang);
            }
        }
        best.1
    }
}

/// The strings of one language, for templates (`t.s("key")`).
#[derive(Debug, Clone, Copy)]
pub struct Tr {
    pub lang: Lang,
}

impl Tr {
    pub fn s(&self, key: &str) -> &'static str {
        lookup(key, self.lang).unwrap_or("?")
    }

    pub fn code(&self) -> &'static str {
        self.lang.code()
    }

    /// The strings the page scripts use (keys starting with `js.`), as JSON safe inside a `<script>` element.
    pub fn script_strings(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = STRINGS
            .iter()
            .filter(|(key, ..)| key.starts_with("js."))
            .map(|(key, en, ru)| {
                let text = if self.lang == Lang::Ru { ru } else { en };
                (
                    key.trim_start_matches("js.").to_owned(),
                    serde_json::Value::from(*text),
                )
            })
            .collect();
        super::script_json(&serde_json::Value::Object(map))
    }
}

pub fn lookup(key: &str, lang: Lang) -> Option<&'static str> {
    STRINGS
        .iter()
        .find(|(k, ..)| *k == key)
        .map(|(_, en, ru)| if lang == Lang::Ru { *ru } else { *en })
}

/// key, English, Russian.
pub const STRINGS: &[(&str, &str, &str)] = &[
    ("app.name", "Orchestrator", "Orchestrator"),
    ("nav.home", "Home", "Главная"),
    ("nav.jobs", "Jobs", "Задачи"),
    ("nav.builder", "Builder", "Конструктор"),
    ("nav.diagnostics", "Diagnostics", "Диагностика"),
    ("nav.settings", "Settings", "Настройки"),
    ("nav.api", "API", "API"),
    ("nav.editor", "ComfyUI editor", "Редактор ComfyUI"),
    ("apidocs.title", "API", "API"),
    (
        "apidocs.intro",
        "Every route of Orchestrator's HTTP API, from its OpenAPI 3.1 document. Clients can be generated from the document itself:",
        "Все маршруты HTTP API Orchestrator из его документа OpenAPI 3.1. Клиентов можно сгенерировать по самому документу:",
    ),
    ("apidocs.method", "Method", "Метод"),
    ("apidocs.path", "Path", "Путь"),
    ("apidocs.summary", "What it does", "Что делает"),
    ("apidocs.answers", "Answers", "Ответы"),
    (
        "apidocs.errors",
        "Every error answer has the body {\"error\": {\"code\", \"message\", \"details\"}} with a stable code.",
        "Каждый ответ с ошибкой имеет тело {\"error\": {\"code\", \"message\", \"details\"}} с неизменным кодом.",
    ),
    (
        "script.error",
        "Something on this page failed; the rest still works. Reload to try again:",
        "На странице произошла ошибка; остальное работает. Обновите страницу, чтобы попробовать снова:",
    ),
    ("home.title", "Control panel", "Панель управления"),
    ("home.ignite", "Start system", "Запуск системы"),
    ("home.generate", "Generate", "Генерация"),
    ("home.backend", "Backend", "Бэкенд"),
    (
        "home.backend.comfy",
        "ComfyUI template (local, free)",
        "Шаблон ComfyUI (локально, бесплатно)",
    ),
    (
        "home.backend.flux",
        "FLUX by Black Forest Labs (paid)",
        "FLUX от Black Forest Labs (платно)",
    ),
    ("home.template", "Template", "Шаблон"),
    ("home.model", "Model", "Модель"),
    ("home.prompt", "Prompt", "Промпт"),
    ("home.width", "Width", "Ширина"),
    ("home.height", "Height", "Высота"),
    (
        "home.aspect",
        "Aspect ratio (Ultra, Kontext)",
        "Соотношение сторон (Ultra, Kontext)",
    ),
    ("home.raw", "Raw mode (Ultra)", "Режим Raw (Ultra)"),
    ("home.submit", "Generate", "Сгенерировать"),
    (
        "home.flux.note",
        "A FLUX request is first priced as a dry run; nothing is paid until you confirm.",
        "Запрос FLUX сначала оценивается без отправки; ничего не оплачивается до подтверждения.",
    ),
    ("home.queue", "Live queue", "Очередь"),
    ("home.recent", "Recent outputs", "Последние результаты"),
    ("home.none", "Nothing yet.", "Пока ничего."),
    ("status.comfy", "ComfyUI", "ComfyUI"),
    ("status.service", "Service", "Служба"),
    ("status.queue", "Queue", "Очередь"),
    (
        "status.budget",
        "Paid budget today",
        "Бюджет на платные запросы сегодня",
    ),
    ("status.overall", "Overall", "Итого"),
    (
        "flux.title",
        "Confirm a paid image",
        "Подтверждение платной генерации",
    ),
    ("flux.model", "Model", "Модель"),
    ("flux.prompt", "Prompt", "Промпт"),
    ("flux.size", "Size", "Размер"),
    ("flux.raw", "Raw mode", "Режим Raw"),
    ("flux.cost", "Estimated cost", "Оценка стоимости"),
    ("flux.nodes", "Paid nodes", "Платные узлы"),
    ("flux.source", "Sent from", "Откуда"),
    ("flux.max", "Most it may spend", "Не больше"),
    (
        "flux.max_help",
        "A paid node of this workflow runs a number of times the graph does not fix, so the run cannot be priced in advance. Give the most it may spend: it is stopped there.",
        "Платный узел этого графа выполняется столько раз, сколько граф не задаёт заранее, поэтому цену запуска нельзя узнать заранее. Укажите, сколько он может потратить: на этой сумме он будет остановлен.",
    ),
    ("flux.cancel", "Cancel", "Отмена"),
    ("flux.confirm", "Confirm and pay", "Подтвердить и оплатить"),
    ("diag.title", "Diagnostics", "Диагностика"),
    (
        "diag.refresh",
        "Refreshed every 10 s.",
        "Обновляется каждые 10 с.",
    ),
    ("diag.services", "Services", "Службы"),
    ("diag.comfy", "ComfyUI", "ComfyUI"),
    ("diag.models", "Models per folder", "Модели по папкам"),
    (
        "diag.paths",
        "extra_model_paths.yaml",
        "extra_model_paths.yaml",
    ),
    ("diag.external", "External APIs", "Внешние API"),
    ("diag.database", "Database", "База данных"),
    (
        "diag.fleet",
        "Orchestrator instances",
        "Экземпляры Orchestrator",
    ),
    ("diag.ignite", "Start system", "Запуск системы"),
    ("diag.rescan", "Rescan models", "Пересканировать модели"),
    (
        "diag.create_paths",
        "Create default paths",
        "Создать пути по умолчанию",
    ),
    (
        "diag.logs",
        "ComfyUI log (last lines)",
        "Журнал ComfyUI (последние строки)",
    ),
    ("diag.lines", "Lines", "Строк"),
    ("diag.load", "Load", "Загрузить"),
    ("diag.comfy_service", "ComfyUI service", "Служба ComfyUI"),
    ("diag.panel", "Panel", "Панель"),
    ("diag.worker", "Worker", "Обработчик"),
    ("builder.title", "Builder", "Конструктор"),
    (
        "builder.intro",
        "Describe a page or an app; v0 builds it. The conversation is kept here.",
        "Опишите страницу или приложение — v0 создаст его. Переписка сохраняется здесь.",
    ),
    ("builder.message", "Message", "Сообщение"),
    ("builder.send", "Send", "Отправить"),
    ("builder.empty", "No messages yet.", "Сообщений пока нет."),
    ("settings.title", "Settings", "Настройки"),
    (
        "settings.intro",
        "The configuration this server runs with. Secrets are masked. Change values in .env or the environment, then restart.",
        "Конфигурация, с которой работает сервер. Секреты скрыты. Меняйте значения в .env или в окружении и перезапустите сервер.",
    ),
    ("settings.language", "Language", "Язык"),
    ("settings.name", "Variable", "Переменная"),
    ("settings.value", "Value", "Значение"),
    ("settings.source", "Source", "Источник"),
    ("source.default", "default", "по умолчанию"),
    ("source.env", "environment", "окружение"),
    ("source.dotenv", ".env file", "файл .env"),
    ("source.flag", "command line", "командная строка"),
    ("jobs.title", "Jobs", "Задачи"),
    ("jobs.all", "All", "Все"),
    ("jobs.id", "Job", "Задача"),
    ("jobs.backend", "Backend", "Бэкенд"),
    ("jobs.status", "Status", "Статус"),
    ("jobs.progress", "Progress", "Прогресс"),
    ("jobs.created", "Created", "Создана"),
    ("jobs.empty", "No jobs.", "Задач нет."),
    ("jobs.more", "Older jobs", "Более ранние задачи"),
    ("job.title", "Job", "Задача"),
    ("job.params", "Parameters", "Параметры"),
    ("job.error", "Error", "Ошибка"),
    ("job.outputs", "Outputs", "Результаты"),
    ("nav.gallery", "Gallery", "Галерея"),
    (
        "job.again",
        "Generate again (new seed)",
        "Ещё раз (новый сид)",
    ),
    (
        "job.use_as_input",
        "Use as input",
        "Взять исходным изображением",
    ),
    ("gallery.download", "Download", "Скачать"),
    ("gallery.delete", "Delete", "Удалить"),
    ("gallery.clear", "Clear the selection", "Снять выделение"),
    ("gallery.keep", "Keep them", "Оставить"),
    ("js.selected", "selected", "выбрано"),
    ("js.select", "Select", "Выбрать"),
    (
        "js.delete_confirm",
        "Delete {n} job(s) with all their files? This cannot be undone.",
        "Удалить задачи ({n}) со всеми их файлами? Отменить это нельзя.",
    ),
    ("gallery.title", "Gallery", "Галерея"),
    ("gallery.search", "Search the prompts", "Поиск по промптам"),
    ("gallery.any", "any", "любой"),
    ("gallery.since", "From", "С"),
    ("gallery.until", "To", "По"),
    (
        "gallery.empty",
        "Nothing here: the outputs of finished jobs show here.",
        "Здесь пусто: здесь появляются результаты завершённых задач.",
    ),
    (
        "job.preview",
        "Preview of the running job",
        "Превью выполняющейся задачи",
    ),
    ("job.cancel", "Cancel job", "Отменить задачу"),
    ("job.back", "All jobs", "Все задачи"),
    (
        "job.confirm",
        "Confirm the price and run…",
        "Подтвердить цену и запустить…",
    ),
    ("job.estimated", "Estimated cost", "Оценка стоимости"),
    ("job.actual", "Actual cost", "Фактическая стоимость"),
    ("error.title.404", "Page not found", "Страница не найдена"),
    (
        "error.title.500",
        "Something went wrong",
        "Что-то пошло не так",
    ),
    (
        "error.text.404",
        "There is no page at this address.",
        "По этому адресу страницы нет.",
    ),
    (
        "error.text.500",
        "The server could not show this page. The problem was logged; try again, or go back home.",
        "Сервер не смог показать страницу. Ошибка записана в журнал; попробуйте снова или вернитесь на главную.",
    ),
    ("error.home", "Back to the home page", "На главную"),
    ("js.online", "online", "в сети"),
    ("js.preview", "preview", "превью"),
    ("js.group_main", "Main", "Основное"),
    ("js.group_size", "Size", "Размер"),
    ("js.group_sampling", "Sampling", "Сэмплирование"),
    ("js.group_advanced", "Advanced", "Дополнительно"),
    ("js.size_preset", "Size preset", "Готовый размер"),
    ("js.size_custom", "Custom", "Свой"),
    ("js.seed_random", "Random seed", "Случайный сид"),
    (
        "js.models_offline",
        "ComfyUI is offline — start it to see its models",
        "ComfyUI не запущен — запустите его, чтобы увидеть модели",
    ),
    (
        "js.models_none",
        "No models in this folder",
        "В этой папке нет моделей",
    ),
    (
        "js.notify_off",
        "Notify me when a job ends",
        "Уведомлять о завершении задач",
    ),
    (
        "js.notify_on",
        "Notifications on (click to stop)",
        "Уведомления включены (нажмите, чтобы выключить)",
    ),
    ("js.job_done", "Job finished", "Задача выполнена"),
    ("js.job_failed", "Job did not finish", "Задача не выполнена"),
    (
        "notify.button",
        "Notify me when a job ends",
        "Уведомлять о завершении задач",
    ),
    ("js.offline", "offline", "не в сети"),
    ("js.unresponsive", "not answering", "не отвечает"),
    ("js.healthy", "healthy", "в порядке"),
    ("js.degraded", "degraded", "с проблемами"),
    ("js.down", "down", "не работает"),
    ("js.running", "running", "выполняется"),
    ("js.pending", "pending", "в ожидании"),
    ("js.left", "left of", "осталось из"),
    ("js.queue", "Queue", "Очередь"),
    ("js.path", "Path", "Путь"),
    (
        "js.budget_today",
        "FLUX budget left today",
        "Остаток бюджета FLUX на сегодня",
    ),
    ("js.state_running", "running", "работает"),
    ("js.state_stopped", "stopped", "остановлена"),
    ("js.state_starting", "starting", "запускается"),
    ("js.state_stopping", "stopping", "останавливается"),
    ("js.state_not_installed", "not installed", "не установлена"),
    (
        "js.state_crash_looping",
        "keeps crashing",
        "постоянно падает",
    ),
    ("js.state_unknown", "unknown", "неизвестно"),
    (
        "status.awaiting_confirmation",
        "awaiting confirmation",
        "ждёт подтверждения",
    ),
    ("status.queued", "queued", "в очереди"),
    ("status.submitted", "submitted", "отправлена"),
    ("status.running", "running", "выполняется"),
    ("status.succeeded", "succeeded", "готова"),
    ("status.failed", "failed", "ошибка"),
    ("status.cancelled", "cancelled", "отменена"),
    ("status.backend_lost", "backend lost", "бэкенд потерян"),
    (
        "status.needs_reconcile",
        "needs reconciling",
        "требует сверки",
    ),
    ("js.idle", "Idle", "Ожидание"),
    ("js.starting", "Starting ComfyUI…", "Запуск ComfyUI…"),
    (
        "js.waiting",
        "Waiting for ComfyUI to answer…",
        "Ожидание ответа ComfyUI…",
    ),
    ("js.ready", "ComfyUI is online", "ComfyUI в сети"),
    ("js.failed", "Start failed", "Запуск не удался"),
    ("js.checking", "Checking…", "Проверка…"),
    ("js.submitted", "Job submitted:", "Задача отправлена:"),
    ("js.pricing", "Pricing the request…", "Оценка стоимости…"),
    (
        "js.cancelled",
        "Cancelled: nothing was sent.",
        "Отменено: ничего не отправлено.",
    ),
    (
        "js.paying",
        "Sending the paid request…",
        "Отправка платного запроса…",
    ),
    ("js.awaiting", "awaiting confirmation", "ждёт подтверждения"),
    ("js.confirm_job", "Confirm…", "Подтвердить…"),
    ("js.workflow", "ComfyUI workflow", "Граф ComfyUI"),
    ("js.from_editor", "ComfyUI's editor", "редактор ComfyUI"),
    (
        "js.from_panel",
        "the panel's ComfyUI API",
        "API ComfyUI панели",
    ),
    ("js.from_api", "Orchestrator's API", "API Orchestrator"),
    ("js.credits", "credits left", "кредитов осталось"),
    ("js.yes", "yes", "да"),
    ("js.no", "no", "нет"),
    ("js.runs", "runs", "запусков"),
    (
        "js.open_runs",
        "an open number of runs",
        "неизвестное число запусков",
    ),
    (
        "js.max_needed",
        "Give the most this run may spend, in dollars, at least the estimate.",
        "Укажите, сколько может потратить запуск, в долларах, не меньше оценки.",
    ),
    ("js.not_set", "not set", "не задан"),
    ("js.set", "set", "задан"),
    ("js.allowed", "allowed", "разрешена"),
    ("js.disabled", "disabled", "отключена"),
    ("js.generation", "generation", "генерация"),
    ("js.key", "key", "ключ"),
    ("js.reachable", "reachable", "доступен"),
    ("js.unreachable", "not reachable", "недоступен"),
    ("js.valid", "valid", "действителен"),
    ("js.invalid", "invalid", "недействителен"),
    ("js.not_configured", "not configured", "не настроен"),
    ("js.files", "files", "файлов"),
    ("js.version", "version", "версия"),
    ("js.devices", "devices", "устройства"),
    ("js.memory", "RAM free", "свободно ОЗУ"),
    ("js.jobs", "jobs", "задач"),
    ("js.this_instance", "this one", "этот"),
    ("js.heartbeat", "heartbeat", "последний сигнал"),
    ("js.stale", "not answering", "не отвечает"),
    ("js.backends_online", "ComfyUI online", "ComfyUI онлайн"),
    ("js.messages", "messages", "сообщений"),
    ("js.size", "size", "размер"),
    (
        "js.paths_missing",
        "No extra_model_paths.yaml: ComfyUI uses its own models folder.",
        "Файла extra_model_paths.yaml нет: ComfyUI использует свою папку models.",
    ),
    (
        "js.paths_unset",
        "COMFY_DIR is not set, so the file has no place.",
        "COMFY_DIR не задан, поэтому расположение файла неизвестно.",
    ),
    (
        "js.paths_valid",
        "ComfyUI can read it.",
        "ComfyUI может его прочитать.",
    ),
    (
        "js.paths_invalid",
        "ComfyUI would not start with it:",
        "ComfyUI не запустится с этим файлом:",
    ),
    (
        "js.confirm_paths",
        "Back up the current extra_model_paths.yaml and write a default one? Base folder:",
        "Сохранить копию текущего extra_model_paths.yaml и записать файл по умолчанию? Базовая папка:",
    ),
    ("js.paths_written", "Written:", "Записано:"),
    (
        "js.rescanned",
        "Models rescanned.",
        "Модели пересканированы.",
    ),
    ("js.no_log", "No log yet.", "Журнала пока нет."),
    (
        "js.v0_missing",
        "v0 is not configured on this server (V0_API_KEY).",
        "v0 не настроен на этом сервере (V0_API_KEY).",
    ),
    ("js.v0_ready", "v0 is ready.", "v0 готов."),
    ("js.sending", "Sending…", "Отправка…"),
    ("js.open_result", "Open the result", "Открыть результат"),
    ("js.open_chat", "Open in v0", "Открыть в v0"),
    ("js.you", "You", "Вы"),
    ("js.assistant", "v0", "v0"),
    ("js.error", "Error", "Ошибка"),
    ("js.no_templates", "No templates.", "Шаблонов нет."),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_cookie_wins_then_the_best_accept_language() {
        assert_eq!(Lang::from_headers(&headers(&[])), Lang::En);
        assert_eq!(
            Lang::from_headers(&headers(&[("accept-language", "ru-RU,ru;q=0.9,en;q=0.8")])),
            Lang::Ru
        );
        assert_eq!(
            Lang::from_headers(&headers(&[("accept-language", "de, en;q=0.5, ru;q=0.7")])),
            Lang::Ru
        );
        assert_eq!(
            Lang::from_headers(&headers(&[
                ("accept-language", "ru"),
                ("cookie", "a=b; lang=en")
            ])),
            Lang::En
        );
    }

    #[test]
    fn every_string_has_both_languages_and_every_used_key_exists() {
        let mut seen = std::collections::HashSet::new();
        for (key, en, ru) in STRINGS {
            assert!(seen.insert(*key), "{key} twice");
            assert!(
                !en.is_empty() && !ru.is_empty(),
                "{key} is missing a language"
            );
        }
        // Keys used by the templates (t.s("…")) and by the script (T.key / T["key"]).
        let root = env!("CARGO_MANIFEST_DIR");
        for entry in std::fs::read_dir(format!("{root}/templates"))
            .unwrap()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            for part in text.split("t.s(\"").skip(1) {
                let key = part.split('"').next().unwrap();
                assert!(
                    lookup(key, Lang::Ru).is_some(),
                    "{key} used in {:?}",
                    entry.path()
                );
            }
        }
        let script = std::fs::read_to_string(format!("{root}/assets/app.js")).unwrap();
        for part in script.split("T.").skip(1) {
            let key: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                lookup(&format!("js.{key}"), Lang::Ru).is_some(),
                "T.{key} used in app.js"
            );
        }
    }
}
