;;; emacs_test.el --- Drives fim-lsp.el in a real `emacs --batch'  -*- lexical-binding: t; -*-

;; Run by test_emacs.py: emacs --batch -q -l emacs_test.el, with FIM_TEST_CONFIG naming a JSON
;; file: {loadPath, cmd, backend ("eglot" or "lsp-mode"), root, capfFile, inlineFile, line,
;; typed, result}.  Keys are typed with `execute-kbd-macro', so commands, hooks and keymaps
;; run as for a user.  Writes a JSON result.

;;; Code:

(require 'json)
(package-initialize)

(defvar fim-test-config
  (json-parse-string (with-temp-buffer
                       (insert-file-contents (getenv "FIM_TEST_CONFIG"))
                       (buffer-string))
                     :object-type 'plist :array-type 'list))
(defvar fim-test-result nil "A plist, written as JSON at the end.")

(defun fim-test-get (key) (plist-get fim-test-config key))
(defun fim-test-put (key value) (setq fim-test-result (plist-put fim-test-result key value)))
(defvar fim-test-start (float-time))
(defvar fim-test-steps nil "Seconds since the start at each step, for slow runs.")
(defun fim-test-step (name)
  (push (format "%6.2f %s" (- (float-time) fim-test-start) name) fim-test-steps))

(defun fim-test-wait (predicate timeout what)
  "Process input until PREDICATE is non-nil; fail after TIMEOUT seconds, naming WHAT."
  (let ((deadline (+ (float-time) timeout))
        value)
    (while (not (setq value (funcall predicate)))
      (when (> (float-time) deadline)
        (error "Timed out waiting for %s" what))
      (accept-process-output nil 0.05))
    value))

(add-to-list 'load-path (fim-test-get :loadPath))
(require 'fim-lsp)
(setq fim-lsp-command (fim-test-get :cmd)
      fim-lsp-modes '(python-mode)
      fim-lsp-idle-delay 0.05)
(fim-lsp-register)

(defvar fim-test-backend (intern (fim-test-get :backend)))

(defun fim-test-events ()
  "The end of the backend's protocol log, for failure messages."
  (let ((buffer (seq-find (lambda (b) (string-match-p "events\\|fim-lsp::stderr\\|lsp-log"
                                                      (buffer-name b)))
                          (buffer-list))))
    (if buffer
        (with-current-buffer buffer
          (buffer-substring-no-properties (max (point-min) (- (point-max) 4000)) (point-max)))
      "")))

(defun fim-test-server-status ()
  "The server's model state (fimLsp/status), as a string."
  (pcase fim-test-backend
    ('eglot (plist-get (jsonrpc-request (fim-lsp--eglot-server) :fimLsp/status nil) :state))
    ('lsp-mode (let ((lsp--cur-workspace (fim-lsp--lsp-workspace)))
                 (gethash "state" (lsp-request "fimLsp/status" nil))))))

(defun fim-test-open (file)
  "Visit FILE with fim-lsp attached through the backend under test."
  (find-file file)
  (switch-to-buffer (current-buffer))
  (pcase fim-test-backend
    ('eglot
     (require 'eglot)
     (if (eglot-current-server)
         (eglot--maybe-activate-editing-mode)
       (apply #'eglot (eglot--guess-contact)))
     (fim-test-wait #'fim-lsp--eglot-server 60 "eglot to connect"))
    ('lsp-mode
     (lsp)
     (fim-test-wait (lambda ()
                      (let ((workspace (fim-lsp--lsp-workspace)))
                        (and workspace (eq (lsp--workspace-status workspace) 'initialized))))
                    60 "lsp-mode to connect")))
  (fim-test-put :encoding
                (pcase fim-test-backend
                  ('eglot (symbol-name (or (bound-and-true-p eglot-current-column-function)
                                           'unknown)))
                  ('lsp-mode "lsp-mode"))))

(defun fim-test-end-of-line (line)
  "Go to the end of LINE (0-based)."
  (goto-char (point-min))
  (forward-line line)
  (end-of-line))

(defun fim-test-capf ()
  "Type at the end of the line, then complete through `completion-at-point'.
With eglot, plain \[completion-at-point].  lsp-mode's table never reports an
exact match (so that a menu always shows), so a sole candidate gets its label
inserted without the textEdit: there the test goes through company (company-capf),
the way lsp-mode sets itself up."
  (fim-test-open (fim-test-get :capfFile))
  (fim-test-step "connected")
  (fim-test-wait (lambda () (equal (fim-test-server-status) "ready")) 120 "the model")
  (fim-test-step "model ready")
  (fim-test-end-of-line (fim-test-get :line))
  (execute-kbd-macro (fim-test-get :typed))
  (fim-test-put :capfBefore (buffer-substring-no-properties (point-min) (point-max)))
  (pcase fim-test-backend
    ('eglot (completion-at-point))
    ('lsp-mode
     (require 'company)
     (setq-local company-backends '(company-capf)
                 company-frontends nil)
     (company-mode 1)
     (company-manual-begin)
     (fim-test-put :companyCandidates (length company-candidates))
     (company-complete-selection)))
  (fim-test-put :capfAfter (buffer-substring-no-properties (point-min) (point-max)))
  (fim-test-put :capfPoint (1- (point))))

(defun fim-test-overlay ()
  "The ghost text overlay: (START TEXT) or nil."
  (when (overlayp fim-lsp-inline--overlay)
    (list (1- (overlay-start fim-lsp-inline--overlay))
          (substring-no-properties (overlay-get fim-lsp-inline--overlay 'after-string)))))

(defun fim-test-inline ()
  "Type with `fim-lsp-inline-mode': ghost text, M-f for a word, TAB for the rest."
  (fim-test-open (fim-test-get :inlineFile))
  (fim-lsp-inline-mode 1)
  (fim-test-end-of-line (fim-test-get :line))
  (execute-kbd-macro (fim-test-get :typed))
  (fim-test-wait #'fim-lsp-inline-current 60 "ghost text")
  (fim-test-step "ghost text")
  (fim-test-put :inlinePoint (1- (point)))
  (fim-test-put :inlineOverlay (fim-test-overlay))
  (fim-test-put :inlineBuffer (buffer-substring-no-properties (point-min) (point-max)))
  (execute-kbd-macro (kbd "M-f"))
  (fim-test-put :afterWordLine (buffer-substring-no-properties (line-beginning-position)
                                                               (line-end-position)))
  (fim-test-put :afterWordOverlay (fim-test-overlay))
  (execute-kbd-macro (kbd "TAB"))
  (fim-test-put :inlineAfter (buffer-substring-no-properties (point-min) (point-max)))
  (fim-test-put :inlinePointAfter (1- (point)))
  ;; Any other command dismisses the suggestion.
  (fim-test-wait #'fim-lsp-inline-current 60 "the next ghost text")
  (execute-kbd-macro (kbd "C-b"))
  (fim-test-put :dismissed (null (fim-test-overlay))))

(condition-case error
    (progn
      (setq eglot-sync-connect t)
      (when (eq fim-test-backend 'lsp-mode)
        (require 'lsp-mode)
        (setq lsp-session-file (expand-file-name "lsp-session" (fim-test-get :root))
              lsp-enabled-clients '(fim-lsp)
              lsp-restart 'ignore
              lsp-keep-workspace-alive nil
              lsp-enable-file-watchers nil
              lsp-enable-suggest-server-download nil
              lsp-headerline-breadcrumb-enable nil
              lsp-modeline-code-actions-enable nil
              lsp-modeline-diagnostics-enable nil
              lsp-completion-provider :none
              lsp-warn-no-matched-clients nil)
        (lsp-workspace-folders-add (fim-test-get :root)))
      (fim-test-step "start")
      (fim-test-capf)
      (fim-test-step "capf done")
      (fim-test-inline)
      (fim-test-step "inline done")
      (fim-test-put :error nil))
  (error (fim-test-put :error (format "%S" error))
         (fim-test-put :events (fim-test-events))))

(fim-test-put :steps (reverse fim-test-steps))
(with-temp-file (fim-test-get :result)
  (insert (json-encode fim-test-result)))
(kill-emacs 0)

;;; emacs_test.el ends here
